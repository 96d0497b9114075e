"""The embeddings demo's dataset: tokenized English sentences (``english_sentences``).

Importing this module registers ``english_sentences`` in the dataset registry; the demo's
recipes name their models by ``torchkd.demo.embeddings.models:...`` paths, whose import (before
the loaders are built) registers it, so ``torchkd train configs/embeddings/distil.yaml`` works.

Samples follow the encoder batch format of ``docs``/the issue-10 spec: ``inputs:
{"input_ids", "attention_mask"}`` (int64) and ``index``; no labels. A batch is cut to its
longest sentence, so short sentences cost no attention over padding.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkd._extras import require
from torchkd.data import DATASETS
from torchkd.demo.embeddings.text import SentenceSplits, module_documents, sentence_splits

__all__ = ["SentenceDataset", "english_sentences", "load_tokenizer", "tokenize"]


class SentenceDataset:
    """Tokenized sentences as dict samples (``inputs`` mapping, ``index``).

    Args:
        input_ids: ``[N, L]`` int64 token ids, right-padded.
        attention_mask: ``[N, L]`` int64, 1 on real tokens.
        sentences: the ``N`` sentences (for reports).

    Example:
        >>> data = SentenceDataset(
        ...     torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
        ... )
        >>> data[[1]]["inputs"]["input_ids"].tolist(), int(data[0]["index"])
        ([[7]], 0)
    """

    def __init__(
        self, input_ids: Tensor, attention_mask: Tensor, sentences: Sequence[str] | None = None
    ) -> None:
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and attention_mask must both be [N, L], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if sentences is not None and len(sentences) != input_ids.shape[0]:
            raise ValueError(f"{len(sentences)} sentences for {input_ids.shape[0]} rows")
        self.input_ids = input_ids.long()
        self.attention_mask = attention_mask.long()
        self.sentences = list(sentences) if sentences is not None else None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """One sample (full padded length) for an integer; for a sequence of positions, the
        batch of those samples cut to its longest sentence."""
        if isinstance(position, int) or (isinstance(position, Tensor) and position.dim() == 0):
            row = int(position)
            inputs = {"input_ids": self.input_ids[row], "attention_mask": self.attention_mask[row]}
            return {"inputs": inputs, "index": torch.tensor(row)}
        rows = torch.as_tensor(position, dtype=torch.long)
        mask = self.attention_mask[rows]
        length = max(int(mask.sum(1).max()), 1) if len(rows) else 1
        inputs = {"input_ids": self.input_ids[rows, :length], "attention_mask": mask[:, :length]}
        return {"inputs": inputs, "index": rows}


def load_tokenizer(path: str | Path | None = None) -> Any:
    """The tokenizer in the local directory ``path`` (default: the packaged all-MiniLM-L6-v2)."""
    from torchkd.demo.embeddings.models import model_dir

    transformers = require("transformers", "demo", "the embeddings demo")
    return transformers.AutoTokenizer.from_pretrained(path or model_dir(), local_files_only=True)


def tokenize(tokenizer: Any, sentences: Sequence[str], max_length: int) -> SentenceDataset:
    """``sentences`` tokenized (truncated to ``max_length`` tokens, padded to the longest)."""
    if not sentences:
        raise ValueError("no sentences to tokenize")
    encoded = tokenizer(
        list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return SentenceDataset(encoded["input_ids"], encoded["attention_mask"], sentences)


@functools.lru_cache(maxsize=4)
def _splits(
    val_fraction: float,
    test_fraction: float,
    seed: int,
    min_words: int,
    max_words: int,
    max_documents: int | None,
) -> SentenceSplits:
    return sentence_splits(
        module_documents(max_documents),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_words=min_words,
        max_words=max_words,
    )


def _first_of_permutation(sentences: list[str], count: int | None, seed: int) -> list[str]:
    if count is None or count >= len(sentences):
        return sentences
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    return [sentences[i] for i in sorted(order[:count])]


@DATASETS.register("english_sentences")
def english_sentences(
    split: str = "train",
    *,
    tokenizer: str | None = None,
    max_length: int = 64,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    min_words: int = 6,
    max_words: int = 40,
    train_sentences: int | None = None,
    val_sentences: int | None = None,
    test_sentences: int | None = None,
    max_documents: int | None = None,
) -> SentenceDataset:
    """English sentences from Python's bundled documentation and docstrings, tokenized.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint documents, see
            :func:`torchkd.demo.embeddings.text.sentence_splits`).
        tokenizer: a local tokenizer directory (default: all-MiniLM-L6-v2's).
        max_length: tokens per sentence at most ([CLS] and [SEP] included).
        val_fraction, test_fraction, split_seed: the document split.
        min_words, max_words: sentence length filter.
        train_sentences, val_sentences, test_sentences: keep this many sentences of the
            split (the first of a permutation seeded by ``split_seed``, in document order),
            or all (``None``).
        max_documents: read only the first documents (the pydoc topics come first): for
            quick runs and tests.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (two special tokens + one), got {max_length}")
    counts = {"train": train_sentences, "val": val_sentences, "test": test_sentences}
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name}_sentences must be >= 1 or null, got {value}")
    splits = _splits(val_fraction, test_fraction, split_seed, min_words, max_words, max_documents)
    sentences = splits.split(split)
    count = counts[split]
    sentences = _first_of_permutation(sentences, count, split_seed)
    return tokenize(load_tokenizer(tokenizer), sentences, max_length)
