"""The cross-modal demo's dataset ``stdlib_code_docs``: each sample one function of the
standard library, seen three ways.

- ``inputs``: the function's code (docstring removed) in the tokens of a byte-level BPE trained
  offline on the training split's code and docstrings (:func:`code_tokenizer`); the student
  reads it;
- ``teacher_inputs``: ``{"embedding"}``, all-MiniLM-L6-v2's embedding of the docstring's
  summary, computed once and cached (:mod:`torchkd.demo.crossmodal.teacher`); the recipe's
  pass-through teacher returns it (``data.teacher_inputs: teacher_inputs``);
- ``doc_inputs``: the summary in the BPE tokens; the contrastive arm's docstring encoder reads
  it (no teacher).

Token views are ``{"input_ids", "attention_mask"}`` int64; samples also carry ``index``, no
labels. A batch cuts each token view to its longest row. Importing this module registers the
dataset; the demo's recipe names its student by a ``torchkd.demo.crossmodal.models:...`` path,
whose import registers it, so ``torchkd train configs/crossmodal/kd.yaml`` works.
"""

from __future__ import annotations

import functools
import random
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torchkd.data import DATASETS
from torchkd.demo.crossmodal.pairs import Pair, function_pairs, split_pairs

__all__ = ["VIEWS", "CodeDocDataset", "code_tokenizer", "stdlib_code_docs"]

VIEWS = ("inputs", "doc_inputs")  # the token views; ``teacher_inputs`` holds embeddings


class CodeDocDataset:
    """Tokenized pairs: one ``[N, L]`` id matrix and mask per token view (right-padded) and
    the teacher's ``[N, D]`` embedding rows.

    Example:
        >>> ids, mask = torch.tensor([[5, 6, 0], [7, 0, 0]]), torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> data = CodeDocDataset({view: (ids, mask) for view in VIEWS}, torch.eye(2))
        >>> data[[1]]["doc_inputs"]["input_ids"].tolist(), int(data[0]["index"])
        ([[7]], 0)
        >>> data[[1]]["teacher_inputs"]["embedding"].tolist()
        [[0.0, 1.0]]
    """

    def __init__(
        self,
        views: dict[str, tuple[Tensor, Tensor]],
        teacher: Tensor,
        pairs: Sequence[Pair] | None = None,
    ) -> None:
        if sorted(views) != sorted(VIEWS):
            raise ValueError(f"views must be {VIEWS}, got {sorted(views)}")
        rows = {ids.shape[0] for ids, _ in views.values()}
        if len(rows) != 1 or any(ids.shape != mask.shape for ids, mask in views.values()):
            raise ValueError("every view needs [N, L] ids and a mask of the same shape, one N")
        if teacher.dim() != 2 or teacher.shape[0] not in rows:
            raise ValueError(f"teacher must be [N, D] with N = {rows}, got {list(teacher.shape)}")
        self.views = {view: (ids.long(), mask.long()) for view, (ids, mask) in views.items()}
        self.teacher = teacher.float()
        self.pairs = list(pairs) if pairs is not None else None

    def __len__(self) -> int:
        return self.views["inputs"][0].shape[0]

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """One sample (full padded length) for an integer; for a sequence of positions, the
        batch of those samples, each view cut to its longest row."""
        single = isinstance(position, int) or (isinstance(position, Tensor) and position.dim() == 0)
        rows = torch.as_tensor(position, dtype=torch.long)
        sample: dict[str, Any] = {
            "index": rows,
            "teacher_inputs": {"embedding": self.teacher[rows]},
        }
        for view, (ids, mask) in self.views.items():
            if single:
                sample[view] = {"input_ids": ids[rows], "attention_mask": mask[rows]}
                continue
            length = max(int(mask[rows].sum(1).max()), 1) if len(rows) else 1
            sample[view] = {
                "input_ids": ids[rows, :length],
                "attention_mask": mask[rows, :length],
            }
        return sample


@functools.lru_cache(maxsize=2)
def _splits(
    val_fraction: float, test_fraction: float, seed: int, max_files: int | None
) -> dict[str, list[Pair]]:
    from torchkd.data.corpora import python_stdlib_files

    files = python_stdlib_files()
    return split_pairs(function_pairs(files[:max_files]), val_fraction, test_fraction, seed)


@functools.lru_cache(maxsize=2)
def code_tokenizer(
    vocab_size: int, val_fraction: float, test_fraction: float, seed: int, max_files: int | None
) -> Any:
    """The byte-level BPE (:func:`torchkd.data.tokenizer.train_bpe_tokenizer`, deterministic)
    trained on the training split's code and docstrings."""
    from torchkd.data.tokenizer import train_bpe_tokenizer

    train = _splits(val_fraction, test_fraction, seed, max_files)["train"]
    texts = [pair.code for pair in train] + [pair.docstring for pair in train]
    with tempfile.TemporaryDirectory() as directory:
        return train_bpe_tokenizer(texts, vocab_size, directory)


def _encoded(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return encoded["input_ids"], encoded["attention_mask"]


def _first_of_permutation(pairs: list[Pair], count: int | None, seed: int) -> list[Pair]:
    if count is None or count >= len(pairs):
        return pairs
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in sorted(order[:count])]


@DATASETS.register("stdlib_code_docs")
def stdlib_code_docs(
    split: str = "train",
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.15,
    split_seed: int = 0,
    vocab_size: int = 4096,
    code_length: int = 128,
    doc_length: int = 48,
    train_pairs: int | None = None,
    val_pairs: int | None = None,
    test_pairs: int | None = None,
    max_files: int | None = None,
    teacher_dir: str | None = None,
    cache: str | None = None,
) -> CodeDocDataset:
    """(code, docstring) pairs of the standard library's functions, tokenized.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint modules,
            :func:`~torchkd.demo.crossmodal.pairs.split_pairs`).
        val_fraction, test_fraction, split_seed: the split by module.
        vocab_size: the code BPE's vocabulary (the student's ``vocab_size`` must be at least
            this).
        code_length, doc_length: tokens kept of the code and of the summary.
        train_pairs, val_pairs, test_pairs: keep this many pairs of the split (the first of a
            permutation seeded by ``split_seed``, in source order), or all (``None``).
        max_files: read only the first standard-library files (quick runs and tests).
        teacher_dir: the teacher's local directory, its tokenizer and weights (default
            all-MiniLM-L6-v2's); the teacher's embeddings of the summaries are computed once
            and cached (:func:`~torchkd.demo.crossmodal.teacher.teacher_embeddings`).
        cache: the cache directory (default :func:`torchkd.data.base.cache_dir`).
    """
    from torchkd.demo.crossmodal.teacher import teacher_embeddings
    from torchkd.demo.embeddings.data import load_tokenizer

    counts = {"train": train_pairs, "val": val_pairs, "test": test_pairs}
    if split not in counts:
        raise ValueError(f"split must be one of {sorted(counts)}, got {split!r}")
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"{name}_pairs must be >= 1 or null, got {value}")
    for name, value in (("code_length", code_length), ("doc_length", doc_length)):
        if value < 3:
            raise ValueError(f"{name} must be >= 3, got {value}")
    pairs = _splits(val_fraction, test_fraction, split_seed, max_files)[split]
    pairs = _first_of_permutation(pairs, counts[split], split_seed)
    if not pairs:
        raise ValueError(f"the {split} split has no pairs; read more files (max_files)")
    bpe = code_tokenizer(vocab_size, val_fraction, test_fraction, split_seed, max_files)
    docs = [pair.docstring for pair in pairs]
    views = {
        "inputs": _encoded(bpe, [pair.code for pair in pairs], code_length),
        "doc_inputs": _encoded(bpe, docs, doc_length),
    }
    teacher_tokens = _encoded(load_tokenizer(teacher_dir), docs, doc_length)
    return CodeDocDataset(views, teacher_embeddings(*teacher_tokens, teacher_dir, cache), pairs)
