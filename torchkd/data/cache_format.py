"""The teacher cache's on-disk format: directory layout, sizes, fingerprints and the manifest
(the writer and the reader are in :mod:`torchkd.data.teacher_cache`).

Directory layout::

    manifest.json            format, fingerprints, settings, per-shard SHA-256, complete flag
    shard-00000.safetensors  rows 0 .. R-1 of the dataset, in index order
    shard-00001.safetensors  rows R .. 2R-1, ...

Each shard holds ``index`` int64 ``[n]`` (the samples' ``index``), ``token_ids`` ``[n, L, k]``
(uint16 when the vocabulary has at most 65,535 entries, else int32), ``log_probs`` float16
``[n, L, k]`` (the teacher's top-k log-probabilities of ``softmax(logits / T)``) and ``tail``
float16 ``[n, L]`` (the log of the probability mass outside the top k). Storage per token
position is

.. math::
    \\text{bytes/token} = k \\, (b_\\text{id} + 2) + 2, \\qquad
    b_\\text{id} = 2 \\text{ (uint16) or } 4 \\text{ (int32)}

(e.g. 66 bytes at k = 16 with a vocabulary under 65,536, 98 bytes above), plus 8 bytes per row
for ``index`` and a small safetensors header per shard. Every position of every row is stored,
padding included (the loss ignores positions whose label is ``-100``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchkd._files import atomic_write

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "MANIFEST",
    "SETTINGS",
    "VALUE_DTYPE",
    "TeacherCacheError",
    "bytes_per_token",
    "fingerprint_dataset",
    "read_manifest",
    "shard_name",
    "split_directory",
    "teacher_fingerprint",
    "token_id_dtype",
    "write_manifest",
]

CACHE_FORMAT = "torchkd-teacher-cache"
CACHE_VERSION = 1
MANIFEST = "manifest.json"
VALUE_DTYPE = torch.float16
UINT16_VOCAB = 65535  # largest vocabulary whose ids are stored as uint16
# manifest entries that must match for a run to resume (or a reader to accept the cache)
SETTINGS = (
    "format",
    "version",
    "teacher_fingerprint",
    "tokenizer_fingerprint",
    "dataset_fingerprint",
    "k",
    "temperature",
    "vocab_size",
    "token_id_dtype",
    "value_dtype",
    "rows",
    "rows_per_shard",
)


class TeacherCacheError(ValueError):
    """A teacher cache that cannot be used: missing, incomplete, damaged or for other data."""


def token_id_dtype(vocab_size: int) -> torch.dtype:
    """uint16 when every id fits (``vocab_size <= 65535``), else int32.

    Example:
        >>> token_id_dtype(32000), token_id_dtype(128256)
        (torch.uint16, torch.int32)
    """
    return torch.uint16 if vocab_size <= UINT16_VOCAB else torch.int32


def bytes_per_token(k: int, vocab_size: int) -> int:
    """Stored bytes per token position: ``k * (id bytes + 2) + 2`` (ids, float16 log-probs, one
    float16 tail), without the per-row ``index`` and the shard headers.

    Example:
        >>> bytes_per_token(16, 32000), bytes_per_token(16, 128256)
        (66, 98)
    """
    id_bytes = torch.empty((), dtype=token_id_dtype(vocab_size)).element_size()
    value_bytes = torch.empty((), dtype=VALUE_DTYPE).element_size()
    return k * (id_bytes + value_bytes) + value_bytes


def split_directory(directory: str | os.PathLike[str], split: str) -> Path:
    """Where a recipe's cache of ``split`` lives: the training split's in ``directory`` itself,
    the validation split's (read by the per-epoch evaluation of the terms) in
    ``directory/val``.

    Example:
        >>> split_directory("cache", "train").as_posix(), split_directory("cache", "val").as_posix()
        ('cache', 'cache/val')
    """
    return Path(directory) if split == "train" else Path(directory) / split


def shard_name(shard: int) -> str:
    """``shard-00000.safetensors`` for shard 0."""
    return f"shard-{shard:05d}.safetensors"


# ------------------------------------------------------------------------------ fingerprints


def _hash_tensor(hasher: Any, name: str, tensor: Tensor) -> None:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    hasher.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
    hasher.update(flat.view(torch.uint8).numpy().tobytes())


def _hash_value(hasher: Any, name: str, value: Any) -> None:
    if isinstance(value, Tensor):
        _hash_tensor(hasher, name, value)
    elif isinstance(value, Mapping):
        for key in sorted(value):
            _hash_value(hasher, f"{name}.{key}", value[key])
    else:
        hasher.update(f"{name}={value!r}|".encode())


def teacher_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's class, configuration and state-dict tensors (names, dtypes,
    shapes and bytes). The configuration is a Hugging Face ``model.config`` without its
    load path and library version, so the same weights saved elsewhere match."""
    hasher = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if callable(getattr(config, "to_dict", None)):
        settings = {
            key: value
            for key, value in config.to_dict().items()
            if key not in ("_name_or_path", "transformers_version")
        }
        hasher.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        _hash_tensor(hasher, name, tensor)
    return hasher.hexdigest()


def fingerprint_dataset(dataset: Any) -> str:
    """The dataset's ``fingerprint`` attribute when it has one (the text dataset's: files,
    tokenizer and settings), else SHA-256 over every sample's tensors, in index order."""
    fingerprint = getattr(dataset, "fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    hasher = hashlib.sha256()
    for position in range(len(dataset)):
        _hash_value(hasher, str(position), dataset[position])
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------- manifest


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(directory) / MANIFEST, lambda stream: stream.write(text.encode()))


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the cache in ``directory``.

    Raises:
        TeacherCacheError: no manifest there, or not a torchkd teacher cache of this version.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise TeacherCacheError(
            f"no teacher cache in {directory} (no {MANIFEST}); write it with "
            "`torchkd cache-teacher RECIPE`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise TeacherCacheError(
            f"{path} is not a torchkd teacher cache of version {CACHE_VERSION} (format "
            f"{manifest.get('format')!r}, version {manifest.get('version')!r})"
        )
    return manifest
