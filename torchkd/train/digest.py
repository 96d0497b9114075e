"""SHA-256 digests of what a checkpoint holds, so that damaged bytes are caught on load.

:func:`content_sha256` hashes the *loaded* objects, not the file: every tensor's dtype, shape
and raw bytes, and every container, key and scalar in order. A checkpoint stores the digest of
its contents when written and the loader recomputes it, so any change to what a load returns
(a flipped byte in the tensor data, in the pickled structure, in a number) is a mismatch, while
bytes that no load reads (zip padding) cannot change the result. (``torch.load`` does not
check the CRC-32s in its zip archive: damaged tensor data loads without a word.)

The encoding is unambiguous: every token carries its type and length, so no two different
contents feed the hash the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["content_sha256", "file_sha256"]


def _token(hasher: Any, text: str) -> None:
    data = text.encode()
    hasher.update(f"{len(data)}:".encode())
    hasher.update(data)


def _feed(hasher: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        _token(hasher, f"tensor {value.dtype} {tuple(value.shape)} {flat.numel()}")
        hasher.update(memoryview(flat.view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        _token(hasher, f"mapping {len(value)}")
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
        # a state_dict's module versions ride along as an attribute; torch.load restores it
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            _token(hasher, "attribute _metadata")
            _feed(hasher, metadata)
    elif isinstance(value, (list, tuple)):
        _token(hasher, f"{type(value).__name__} {len(value)}")
        for item in value:
            _feed(hasher, item)
    else:  # None, bool, int, float, str, bytes, torch.dtype, ...: repr is exact for these
        _token(hasher, f"{type(value).__name__} {value!r}")


def content_sha256(value: Any) -> str:
    """The hex SHA-256 digest of ``value``: nested mappings, lists, tuples, tensors, scalars.

    Mappings are hashed in their iteration order (which ``torch.save``/``torch.load`` keep).

    Example:
        >>> content_sha256({"w": torch.zeros(2)}) == content_sha256({"w": torch.zeros(2)})
        True
        >>> content_sha256({"w": torch.zeros(2)}) == content_sha256({"w": torch.zeros(3)})
        False
    """
    hasher = hashlib.sha256()
    _feed(hasher, value)
    return hasher.hexdigest()


def file_sha256(path: Path) -> str:
    """The hex SHA-256 digest of the bytes of the file ``path`` (read in 1 MiB blocks): what a
    sharded checkpoint stores for each of its DCP files."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()
