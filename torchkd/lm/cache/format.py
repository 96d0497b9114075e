"""The teacher cache's on-disk format: directory layout, sizes, fingerprints and the manifest
(the writer is :mod:`torchkd.lm.cache.write`, the reader :mod:`torchkd.lm.cache.read`), and the
batch keys a cached teacher's top-k or sampled distribution travels under.

Directory layout::

    manifest.json            format, fingerprints, settings, per-shard SHA-256, complete flag,
                             and the SHA-256 of the manifest itself (``manifest_sha256``)
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

A teacher with its own tokenizer (manifest ``teacher_tokenizer_fingerprint``; ``vocab_size``
is the teacher's ``V_T``) is cached in the student's layout: position ``t`` of a row holds the
teacher's top-k at the teacher position aligned with student position ``t``, padding where none
is (:mod:`torchkd.lm.cache.layout`). Such a cache is of kind ``topk`` only.

A *sampled* cache (manifest ``kind: sampled``, :mod:`torchkd.losses.sampled`) holds instead
``token_ids`` ``[n, L, N]`` (the distinct ids of ``N`` draws from the teacher, then padding),
``counts`` ``[n, L, N]`` (uint8 for ``N <= 255``, else uint16; 0 for padding) and ``entropy``
float32 ``[n, L]`` (the teacher's :math:`H(q)`):

.. math::
    \\text{bytes/token} = N \\, (b_\\text{id} + b_\\text{count}) + 4

(40 bytes at N = 12 with a vocabulary under 65,536). Its draws are seeded per row from the
manifest's ``seed`` and the row index (:func:`row_seed`), so a resumed write draws what an
uninterrupted one would. A sampled cache with an exact head (manifest ``k``: top-k plus
samples combined) also holds the head as ``head_ids`` ``[n, L, k]``, ``head_log_probs``
float32 ``[n, L, k]`` and ``head_tail`` float32 ``[n, L]`` (float32, not float16: rounding
the head's probabilities would bias the estimate), ``k (b_id + 4) + 4`` more bytes per token.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchkd._files import atomic_write
from torchkd.data.documents import file_digest
from torchkd.errors import InputError

__all__ = [
    "CACHE_FORMAT",
    "CACHE_KEYS",
    "CACHE_VERSION",
    "KINDS",
    "MANIFEST",
    "SAMPLED_KEYS",
    "SETTINGS",
    "VALUE_DTYPE",
    "TeacherCacheError",
    "bytes_per_token",
    "count_dtype",
    "fingerprint_dataset",
    "read_manifest",
    "row_seed",
    "sampled_bytes_per_token",
    "shard_name",
    "source_fingerprint",
    "split_directory",
    "teacher_fingerprint",
    "token_id_dtype",
    "verify_shards",
    "write_manifest",
]

# the batch entries of a cached teacher: top-k ids [..., L, k], their log-probabilities and the
# log of the tail mass [..., L] (what ``torchkd.losses.TopKLogits(ids, log_probs, tail)`` takes)
CACHE_KEYS = ("teacher_topk_ids", "teacher_topk_log_probs", "teacher_topk_tail")
# the batch entries of a sampled cache: distinct drawn ids and their counts [..., L, N] and the
# teacher's entropy [..., L] (what ``torchkd.losses.SampledLogits(ids, counts, entropy)`` takes)
SAMPLED_KEYS = ("teacher_sample_ids", "teacher_sample_counts", "teacher_entropy")
# a sampled cache with an exact head adds the head under CACHE_KEYS (SampledLogits.head)
KINDS = ("topk", "sampled")  # a cache's kind: its manifest's ``kind``
CACHE_FORMAT = "torchkd-teacher-cache"
# 2: the manifest holds its own SHA-256 and the teacher's source fingerprint; 3: its kind
# (top-k or sampled), samples and seed
CACHE_VERSION = 3
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest_sha256"  # the manifest's own entry: SHA-256 of all the others
VALUE_DTYPE = torch.float16
# a sampled cache's H(q) and head: float16 would shift the loss by ~1e-3 and bias the head
ENTROPY_DTYPE = torch.float32
UINT16_VOCAB = 65535  # largest vocabulary whose ids are stored as uint16
UINT8_COUNT = 255  # most samples whose counts are stored as uint8
MAX_SAMPLES = 65535  # counts are at most uint16
# manifest entries that must match for a run to resume (or a reader to accept the cache)
SETTINGS = (
    "format",
    "version",
    "teacher_fingerprint",
    "teacher_source",
    "tokenizer_fingerprint",
    "teacher_tokenizer_fingerprint",
    "dataset_fingerprint",
    "kind",
    "k",
    "samples",
    "seed",
    "temperature",
    "vocab_size",
    "token_id_dtype",
    "value_dtype",
    "rows",
    "rows_per_shard",
)


class TeacherCacheError(InputError, ValueError):
    """A teacher cache that cannot be used: missing, incomplete, damaged, edited, or written for
    other data or another teacher. The command line refuses it with exit code 2."""


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


def count_dtype(samples: int) -> torch.dtype:
    """The dtype of a sampled cache's counts: uint8 for ``samples <= 255``, else uint16.

    Example:
        >>> count_dtype(12), count_dtype(1000)
        (torch.uint8, torch.uint16)
    """
    return torch.uint8 if samples <= UINT8_COUNT else torch.uint16


def sampled_bytes_per_token(samples: int, vocab_size: int, k: int | None = None) -> int:
    """Stored bytes per token position of a sampled cache: ``N * (id bytes + count bytes) + 4``
    (ids, counts, one float32 entropy), plus ``k * (id bytes + 4) + 4`` with an exact head of
    ``k`` tokens (float32 log-probabilities and tail), without the per-row ``index`` and the
    shard headers.

    Example:
        >>> sampled_bytes_per_token(12, 32000), sampled_bytes_per_token(12, 128256)
        (40, 64)
        >>> sampled_bytes_per_token(8, 32000, k=4)
        56
    """
    id_bytes = torch.empty((), dtype=token_id_dtype(vocab_size)).element_size()
    counts = torch.empty((), dtype=count_dtype(samples)).element_size()
    value_bytes = torch.empty((), dtype=ENTROPY_DTYPE).element_size()
    head = 0 if not k else k * (id_bytes + value_bytes) + value_bytes
    return samples * (id_bytes + counts) + value_bytes + head


def row_seed(seed: int, index: int) -> int:
    """The seed of row ``index``'s draws in a sampled cache written with ``seed``: the first 63
    bits of SHA-256 of both (independent streams per row, whatever the write order).

    Example:
        >>> row_seed(0, 1) == row_seed(0, 1) != row_seed(0, 2)
        True
    """
    digest = hashlib.sha256(f"torchkd-sampled-cache|{seed}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def fingerprint_dataset(dataset: Any, inputs_key: str = "inputs") -> str:
    """The dataset's ``fingerprint`` attribute when it has one (the text dataset's: files,
    tokenizer and settings), else SHA-256 over every sample's tensors, in index order. A cache
    of the teacher reading another entry than ``inputs`` (cross-modal distillation,
    ``data.teacher_inputs``) has the SHA-256 of that fingerprint and ``inputs_key``, so it is
    not read for the same data seen through another entry."""
    fingerprint = getattr(dataset, "fingerprint", None)
    if not isinstance(fingerprint, str):
        hasher = hashlib.sha256()
        for position in range(len(dataset)):
            _hash_value(hasher, str(position), dataset[position])
        fingerprint = hasher.hexdigest()
    if inputs_key == "inputs":
        return fingerprint
    keyed = json.dumps({"dataset": fingerprint, "inputs_key": inputs_key}, sort_keys=True)
    return hashlib.sha256(keyed.encode()).hexdigest()


def _file_digests(value: Any) -> Any:
    """``value`` with every string that names an existing file replaced by that file's SHA-256
    and every one that names a directory by the digests of its files (by relative path)."""
    if isinstance(value, Mapping):
        return {key: _file_digests(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_file_digests(item) for item in value]
    if isinstance(value, str) and os.path.isfile(value):
        return {"file_sha256": file_digest(Path(value))}
    if isinstance(value, str) and os.path.isdir(value):
        root = Path(value)
        files = sorted(path for path in root.rglob("*") if path.is_file())
        return {"files_sha256": {str(p.relative_to(root)): file_digest(p) for p in files}}
    return value


def source_fingerprint(model: str, kwargs: Mapping[str, Any], checkpoint: str | None) -> str:
    """SHA-256 of where a recipe's teacher comes from, computed without building it: the model
    name, its kwargs and the bytes of its checkpoint file and of every file or directory a
    kwarg names (e.g. a Hugging Face model directory), not their paths. Training from a cache
    compares it with the recipe's ``teacher:``; a teacher with no weights file (random
    initial weights) is identified by its model and kwargs alone."""
    source = {"model": model, "kwargs": _file_digests(dict(kwargs))}
    source["checkpoint"] = _file_digests(checkpoint) if checkpoint is not None else None
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------- manifest


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    entries = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically, with its own SHA-256 (``manifest_sha256``) over its
    other entries (set in ``manifest`` too)."""
    manifest[MANIFEST_DIGEST] = _manifest_digest(manifest)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(directory) / MANIFEST, lambda stream: stream.write(text.encode()))


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the cache in ``directory``, its own digest and its shard list checked.

    Raises:
        TeacherCacheError: no manifest there, not JSON, not a torchkd teacher cache of this
            version, edited or damaged (its ``manifest_sha256`` does not match), or a shard
            list that does not cover its rows.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise TeacherCacheError(
            f"no teacher cache in {directory} (no {MANIFEST}); write it with "
            "`torchkd cache-teacher RECIPE`"
        )
    rewrite = f"delete {directory} and write the cache again with `torchkd cache-teacher RECIPE`"
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TeacherCacheError(f"{path} is damaged (not JSON: {error}); {rewrite}") from None
    if not isinstance(manifest, dict):
        raise TeacherCacheError(f"{path} is damaged (not a JSON object); {rewrite}")
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise TeacherCacheError(
            f"{path} is not a torchkd teacher cache of version {CACHE_VERSION} (format "
            f"{manifest.get('format')!r}, version {manifest.get('version')!r}); {rewrite}"
        )
    digest = _manifest_digest(manifest)
    if manifest.get(MANIFEST_DIGEST) != digest:
        raise TeacherCacheError(
            f"{path} was edited or is damaged: the SHA-256 of its entries is {digest}, its "
            f"{MANIFEST_DIGEST} says {manifest.get(MANIFEST_DIGEST)!r}; {rewrite}"
        )
    _check_shard_list(path, manifest, rewrite)
    return manifest


def _check_shard_list(path: Path, manifest: dict[str, Any], rewrite: str) -> None:
    """Shard ``i`` must be ``shard_name(i)`` with the rows it covers; a complete cache must
    list every shard of its ``rows``."""
    rows, per_shard = int(manifest["rows"]), int(manifest["rows_per_shard"])
    shards = manifest["shards"]
    expected = math.ceil(rows / per_shard)
    if len(shards) > expected or (manifest["complete"] and len(shards) != expected):
        raise TeacherCacheError(
            f"{path} lists {len(shards)} shards, but its {rows} rows of {per_shard} per shard "
            f"take {expected}; {rewrite}"
        )
    for shard, entry in enumerate(shards):
        want = {"file": shard_name(shard), "rows": min(per_shard, rows - shard * per_shard)}
        if {key: entry.get(key) for key in want} != want or "sha256" not in entry:
            raise TeacherCacheError(
                f"{path}: shard entry {shard} is {entry}, expected {want} and its sha256; {rewrite}"
            )


def verify_shards(directory: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Check that every shard the manifest lists is there with the SHA-256 it records.

    Raises:
        TeacherCacheError: naming the first missing or damaged shard file.
    """
    for entry in manifest["shards"]:
        path = Path(directory) / entry["file"]
        if not path.is_file():
            raise TeacherCacheError(
                f"teacher cache shard {path} is missing; delete {directory} and write the cache "
                "again"
            )
        digest = file_digest(path)
        if digest != entry["sha256"]:
            raise TeacherCacheError(
                f"teacher cache shard {path} is damaged: its SHA-256 is {digest}, the manifest "
                f"says {entry['sha256']}; delete {directory} and write the cache again"
            )
