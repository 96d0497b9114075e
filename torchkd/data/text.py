"""Text data for language-model distillation: the ``text`` dataset (local files, no download).

Documents (see :mod:`torchkd.data.documents`) are split into train / val / test by a seeded
permutation of documents, so no document is in two splits, then tokenized (without the
tokenizer's own special tokens) into fixed-length samples:

- ``format="text"``: the split's documents, each followed by the eos token, are concatenated
  and cut into windows of ``seq_len`` tokens (attention mask all 1; the last, incomplete
  window, fewer than ``seq_len`` tokens, is dropped);
- ``format="prompt_completion"``: one sample per record, ``prompt + completion + eos``
  (the prompt cut to its last ``max_prompt_length`` tokens, the whole cut to ``seq_len``),
  right-padded; only completion tokens (and the eos) are labels. ``prompt_ids`` /
  ``prompt_mask`` hold the prompt LEFT-padded to ``max_prompt_length`` (for generation).

Every sample is ``{"inputs": {"input_ids", "attention_mask"}, "labels", "index"}`` (plus
``prompt_ids``, ``prompt_mask``), int64, with ``labels[t] = input_ids[t + 1]`` already shifted
(:func:`torchkd.lm.next_token_labels`) and ``-100`` at the last position, at padding and where
the next token belongs to the prompt.

The tokenized splits are cached as one safetensors file under
:func:`torchkd.data.base.cache_dir` ``/text``, keyed by the files' SHA-256 digests, the
tokenizer's fingerprint, every setting and :data:`FORMAT_VERSION`; written atomically, with
the SHA-256 of its tensors and metadata in its metadata (``sha256``). A cache file that does not
read back whole (unreadable, other settings, or another digest: a flipped byte) is derived
data: it is rebuilt from the files, with a one-line notice on stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchkd._files import atomic_write
from torchkd.data.aligned_text import encode_teacher_windows
from torchkd.data.base import (
    SPLITS,
    cache_dir,
    cache_key,
    check_fraction,
    check_split,
)
from torchkd.data.documents import (
    FORMATS,
    Document,
    file_digest,
    read_documents,
    resolve_files,
    split_documents,
)
from torchkd.data.registry import DATASETS
from torchkd.data.tokenizer import load_tokenizer, require_hf, tokenizer_fingerprint
from torchkd.lm import IGNORE_INDEX, next_token_labels
from torchkd.lm.aligned import TEACHER_INPUTS, TEACHER_POSITIONS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    _Tokenizers = tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase | None]

__all__ = ["FORMAT_VERSION", "TextDataset", "load_text"]

FORMAT_VERSION = 2  # bump when the encoding changes: old cache files are then never read
# (2: the file holds its digest)
_STORED_DTYPES = {
    "input_ids": torch.int32,
    "labels": torch.int32,
    "prompt_ids": torch.int32,
    "teacher_input_ids": torch.int32,
    "teacher_positions": torch.int32,
}


class TextDataset(Dataset[dict[str, Any]]):
    """Tokenized fixed-length samples of one split (int32/int8 in memory, int64 samples).

    Answers one position with a sample and a sequence of positions with the batch of those
    samples (one indexing operation), as :func:`torchkd.data.batching.batch_loader` asks.

    Attributes:
        tensors: ``input_ids``, ``attention_mask``, ``labels`` ``[N, seq_len]`` (and
            ``prompt_ids``, ``prompt_mask`` ``[N, max_prompt_length]``).
        settings: the dataset's settings (format, seq_len, tokenizer fingerprint, split, ...).
        documents: the sources (``file`` or ``file:line``) of the split's documents.
        eos_token_id: the token ending every document / completion.
        pad_token_id: the token filling padding (the eos token when the tokenizer has none).
    """

    def __init__(
        self,
        tensors: dict[str, Tensor],
        settings: dict[str, Any],
        documents: list[str],
        eos_token_id: int,
        pad_token_id: int,
    ) -> None:
        self.tensors = tensors
        self.settings = settings
        self.documents = documents
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return self.tensors["input_ids"].shape[0]

    def __getitem__(self, position: int | Sequence[int] | Tensor) -> dict[str, Any]:
        if isinstance(position, int | np.integer) or (
            isinstance(position, Tensor) and position.dim() == 0
        ):
            index = torch.tensor(int(position))
        else:
            index = torch.as_tensor(position, dtype=torch.long)
            if index.dim() != 1:
                raise ValueError(f"batch indices must be 1-D, got shape {tuple(index.shape)}")
        rows = {name: tensor[index].long() for name, tensor in self.tensors.items()}
        sample: dict[str, Any] = {
            "inputs": {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"]},
            "labels": rows["labels"],
            "index": index,
        }
        if "prompt_ids" in rows:
            sample["prompt_ids"], sample["prompt_mask"] = rows["prompt_ids"], rows["prompt_mask"]
        if "teacher_input_ids" in rows:
            sample[TEACHER_INPUTS] = {
                "input_ids": rows["teacher_input_ids"],
                "attention_mask": rows["teacher_attention_mask"],
            }
            sample[TEACHER_POSITIONS] = rows["teacher_positions"]
        return sample

    @property
    def seq_len(self) -> int:
        return int(self.settings["seq_len"])

    @property
    def tokenizer_fingerprint(self) -> str:
        return str(self.settings["tokenizer"])

    @property
    def teacher_tokenizer_fingerprint(self) -> str | None:
        """The fingerprint of ``teacher_tokenizer`` (None: the teacher reads the student's
        tokens)."""
        return self.settings.get("teacher_tokenizer")

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the settings and every token tensor (names, dtypes, shapes, bytes):
        equal fingerprints mean equal samples."""
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode())
        for name in sorted(self.tensors):
            tensor = self.tensors[name].contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()


def _pack(token_lists: Sequence[Sequence[int]], eos: int, seq_len: int) -> dict[str, Tensor]:
    """Documents joined with ``eos`` (one after each) cut into ``seq_len`` windows."""
    pieces = [np.asarray([*tokens, eos], dtype=np.int64) for tokens in token_lists]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    num_windows = len(stream) // seq_len
    input_ids = torch.from_numpy(stream[: num_windows * seq_len].reshape(num_windows, seq_len))
    attention_mask = torch.ones_like(input_ids)
    labels = next_token_labels(input_ids, attention_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _encode_pairs(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    eos: int,
    pad: int,
    seq_len: int,
    max_prompt_length: int,
) -> dict[str, Tensor]:
    """``prompt[-max_prompt_length:] + completion + eos`` cut to ``seq_len``, right-padded;
    labels only where the next token is a completion token; prompts left-padded."""
    count = len(prompts)
    input_ids = torch.full((count, seq_len), pad, dtype=torch.long)
    attention_mask = torch.zeros((count, seq_len), dtype=torch.long)
    prompt_ids = torch.full((count, max_prompt_length), pad, dtype=torch.long)
    prompt_mask = torch.zeros((count, max_prompt_length), dtype=torch.long)
    prompt_lengths = torch.zeros(count, dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        prompt = list(prompt)[len(prompt) - min(len(prompt), max_prompt_length) :]
        tokens = [*prompt, *completion, eos][:seq_len]
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        if prompt:
            prompt_ids[row, max_prompt_length - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[row, max_prompt_length - len(prompt) :] = 1
        prompt_lengths[row] = len(prompt)
    labels = next_token_labels(input_ids, attention_mask)
    # position t predicts token t + 1: the targets inside the prompt are positions < len - 1
    predicts_prompt = torch.arange(seq_len) < (prompt_lengths[:, None] - 1)
    labels = labels.masked_fill(predicts_prompt, IGNORE_INDEX)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
    }


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _encode_split(
    documents: list[Document],
    tokenizers: _Tokenizers,
    settings: dict[str, Any],
    eos: int,
    pad: int,
) -> dict[str, Tensor]:
    tokenizer, teacher_tokenizer = tokenizers
    if settings["format"] == "text":
        texts = [d.fields[0] for d in documents]
        tensors = _pack(_tokenize(tokenizer, texts), eos, settings["seq_len"])
        if teacher_tokenizer is not None:
            tensors |= encode_teacher_windows(
                texts,
                tokenizer,
                teacher_tokenizer,
                settings["seq_len"],
                *_special_ids(teacher_tokenizer),
            )
    else:
        tensors = _encode_pairs(
            _tokenize(tokenizer, [d.fields[0] for d in documents]),
            _tokenize(tokenizer, [d.fields[1] for d in documents]),
            eos,
            pad,
            settings["seq_len"],
            settings["max_prompt_length"],
        )
    return {
        name: tensor.to(_STORED_DTYPES.get(name, torch.int8)) for name, tensor in tensors.items()
    }


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer: {type(tokenizer).__name__} has no eos token, which ends every document;"
            " set tokenizer.eos_token (e.g. to its separator token) and save it again"
        )
    pad = tokenizer.pad_token_id
    return int(eos), int(eos if pad is None else pad)


def _build(
    files: list[Path], tokenizers: _Tokenizers, settings: dict[str, Any], path: Path
) -> dict[str, Any]:
    """Read, split, tokenize and encode every split; write them to ``path`` atomically."""
    from safetensors.torch import save

    documents = read_documents(files, settings["format"])
    parts = split_documents(
        len(documents), settings["val_fraction"], settings["test_fraction"], settings["split_seed"]
    )
    eos, pad = _special_ids(tokenizers[0])
    tensors: dict[str, Tensor] = {}
    sources: dict[str, list[str]] = {}
    for split in SPLITS:
        chosen = [documents[i] for i in parts[split]]
        sources[split] = [document.source for document in chosen]
        for name, tensor in _encode_split(chosen, tokenizers, settings, eos, pad).items():
            tensors[f"{split}.{name}"] = tensor.contiguous()
    metadata = {
        "settings": json.dumps(settings, sort_keys=True),
        "documents": json.dumps(sources),
        "special_ids": json.dumps([eos, pad]),
    }
    metadata["sha256"] = _digest(tensors, metadata)
    data = save(tensors, metadata=metadata)
    atomic_write(path, lambda stream: stream.write(data))
    return {"tensors": tensors, "metadata": metadata}


def _digest(tensors: dict[str, Tensor], metadata: dict[str, str]) -> str:
    """SHA-256 (hex) of the metadata (but its ``sha256``) and the tensors (names, dtypes,
    shapes, bytes)."""
    entries = {key: value for key, value in metadata.items() if key != "sha256"}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _load_cached(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The cache file's contents, or ``None`` when it is missing or does not read back whole
    (then, with a notice on stderr, to be rebuilt)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as archive:
            metadata = archive.metadata() or {}
            tensors = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        problem = f"unreadable: {error}"
    else:
        if metadata.get("settings") != json.dumps(settings, sort_keys=True):
            problem = "written for other settings"
        elif metadata.get("sha256") != _digest(tensors, metadata):
            problem = "its SHA-256 does not match its contents"
        else:
            return {"tensors": tensors, "metadata": metadata}
    print(
        f"torchkd: text dataset cache {path} is damaged ({problem}); rebuilding it", file=sys.stderr
    )
    return None


def _check_settings(
    text_format: str, seq_len: int, max_prompt_length: int | None, fractions: dict[str, float]
) -> int | None:
    if text_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {text_format!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2 (a token and its next), got {seq_len!r}")
    for name, value in fractions.items():
        check_fraction(name, value)
    if sum(fractions.values()) >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training documents, got {fractions}"
        )
    if text_format == "text":
        if max_prompt_length is not None:
            raise ValueError("max_prompt_length applies to format='prompt_completion' only")
        return None
    length = seq_len // 2 if max_prompt_length is None else max_prompt_length
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"max_prompt_length must be a positive integer, got {length!r}")
    if seq_len <= length:
        raise ValueError(
            f"seq_len={seq_len} is too small: it must exceed max_prompt_length={length} so that "
            "every sample keeps at least one completion token"
        )
    return length


def _check_given(**required: object) -> None:
    """Refuse required arguments left out, naming them as a recipe sets them
    (``data.kwargs.NAME``), rather than with a Python signature error."""
    missing = [f"data.kwargs.{name}" for name, value in required.items() if value is None]
    if missing:
        raise ValueError(
            f"{' and '.join(missing)} not set: the text dataset needs files (paths or globs of "
            "the text files) and tokenizer (a local tokenizer directory)"
        )


@DATASETS.register("text")
def load_text(
    split: str = "train",
    *,
    files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: str | os.PathLike[str] | PreTrainedTokenizerBase | None = None,
    seq_len: int,
    format: str = "text",
    max_prompt_length: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> TextDataset:
    """One split of local text files as fixed-length causal-LM samples (see the module doc).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        files: paths or globs (``**`` recursive); ``.jsonl`` files hold one document per line
            (``{"text": ...}``, or ``{"prompt": ..., "completion": ...}``), any other file is
            one document. Required (``None`` is refused naming ``data.kwargs.files``, where a
            recipe sets it).
        tokenizer: a local tokenizer directory (:func:`~torchkd.data.tokenizer.load_tokenizer`)
            or a loaded tokenizer; it needs an eos token. Required, like ``files``.
        teacher_tokenizer: the teacher's own tokenizer (a directory or a loaded fast
            tokenizer with an eos token), when it is not the student's: each sample then also
            holds ``teacher_inputs`` (the same text in the teacher's tokens) and
            ``teacher_positions`` (the alignment; :mod:`torchkd.data.aligned_text`).
            ``format="text"`` only; its fingerprint joins the cache key.
        seq_len: tokens per sample.
        format: ``"text"`` (packed) or ``"prompt_completion"`` (one padded pair per sample).
        max_prompt_length: prompt tokens kept (the last ones) and the width of ``prompt_ids``;
            ``prompt_completion`` only, default ``seq_len // 2``.
        val_fraction: fraction of the documents in ``val``.
        test_fraction: fraction of the documents in ``test``.
        split_seed: seed of the document permutation that assigns the splits.
        cache: cache directory override (default :func:`~torchkd.data.base.cache_dir`).
    """
    check_split(split)
    _check_given(files=files, tokenizer=tokenizer)
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    prompt_length = _check_settings(format, seq_len, max_prompt_length, fractions)
    require_hf("the text dataset")
    paths = resolve_files(files)
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(teacher_tokenizer, str | os.PathLike):
        teacher_tokenizer = load_tokenizer(teacher_tokenizer)
    if teacher_tokenizer is not None and format != "text":
        raise ValueError(
            "data.kwargs.teacher_tokenizer needs format='text' (packed windows); aligning "
            f"prompt_completion samples across tokenizers is not supported, got {format!r}"
        )
    settings: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "files": [file_digest(path) for path in paths],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "format": format,
        "seq_len": seq_len,
        "max_prompt_length": prompt_length,
        **fractions,
        "split_seed": split_seed,
    }
    if teacher_tokenizer is not None:  # only then: the plain dataset keeps its cache key
        settings["teacher_tokenizer"] = tokenizer_fingerprint(teacher_tokenizer)
    path = cache_dir(cache) / "text" / f"text-{cache_key(settings)}.safetensors"
    stored = _load_cached(path, settings) or _build(
        paths, (tokenizer, teacher_tokenizer), settings, path
    )
    documents = json.loads(stored["metadata"]["documents"])[split]
    if not documents:
        total = sum(len(names) for names in json.loads(stored["metadata"]["documents"]).values())
        hint = (
            "lower val_fraction / test_fraction" if split == "train" else f"raise {split}_fraction"
        )
        raise ValueError(
            f"split {split!r} has no documents: {total} documents with {fractions} leave none "
            f"for it; {hint} or add documents"
        )
    prefix = f"{split}."
    tensors = {
        name[len(prefix) :]: tensor
        for name, tensor in stored["tensors"].items()
        if name.startswith(prefix)
    }
    if tensors["input_ids"].shape[0] == 0:
        raise ValueError(
            f"split {split!r} has fewer than seq_len={seq_len} tokens ({len(documents)} "
            "documents): lower seq_len or give the split more documents"
        )
    eos, pad = json.loads(stored["metadata"]["special_ids"])
    return TextDataset(tensors, {**settings, "split": split}, documents, eos, pad)
