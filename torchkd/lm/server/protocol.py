"""The teacher server's wire format: safetensors payloads (never pickle) over HTTP.

``POST /v1/teacher`` takes a safetensors body holding ``input_ids`` (integer ``[B, L]``),
optionally ``attention_mask`` (``[B, L]``, 0 or 1) and ``index`` (int64 ``[B]``, the samples'
dataset indices: the seeds of a sampled teacher's draws, required for it), with the metadata
entry ``torchkd`` holding a JSON object of the settings the client expects (any of
:data:`CHECKED`). It answers a safetensors body holding exactly the tensors a teacher-cache
shard holds for those rows (:mod:`torchkd.lm.cache.format`: ``token_ids``, ``log_probs``,
``tail`` of a top-k teacher; ``token_ids``, ``counts``, ``entropy`` (and ``head_*``) of a
sampled one), its metadata ``torchkd`` the server's settings (:data:`SERVED`).
``GET /v1/settings`` answers those settings as JSON. Refusals are JSON ``{"error": message}``
with status 400 (a malformed request), 404, 409 (the request expects other settings), 411,
413 or 500.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from torchkd.errors import InputError

__all__ = [
    "ANSWER_PATH",
    "CHECKED",
    "INPUT_KEYS",
    "METADATA_KEY",
    "PROTOCOL",
    "SERVED",
    "SETTINGS_PATH",
    "VERSION",
    "TeacherServerError",
    "decode",
    "encode",
    "mismatches",
]

PROTOCOL = "torchkd-teacher-server"
VERSION = 1
ANSWER_PATH = "/v1/teacher"
SETTINGS_PATH = "/v1/settings"
METADATA_KEY = "torchkd"  # the safetensors metadata entry holding the JSON settings
INPUT_KEYS = ("input_ids", "attention_mask")  # the teacher's inputs a request may carry
# what a server answers with: its teacher, the cache settings of its answers, their dtypes
SERVED = (
    "protocol",
    "version",
    "teacher_fingerprint",
    "teacher_source",
    "kind",
    "k",
    "samples",
    "seed",
    "temperature",
    "vocab_size",
    "token_id_dtype",
    "value_dtype",
)
# what a client may expect (the request's metadata); the server refuses another value
CHECKED = (
    "protocol",
    "version",
    "teacher_fingerprint",
    "kind",
    "k",
    "samples",
    "seed",
    "temperature",
)


class TeacherServerError(InputError):
    """A teacher server that cannot be used: unreachable, answering an error, or serving
    another teacher or other settings than the recipe expects. The message names the URL."""


def encode(tensors: Mapping[str, Tensor], settings: Mapping[str, Any]) -> bytes:
    """A safetensors payload of ``tensors`` with ``settings`` as JSON in its metadata."""
    metadata = {METADATA_KEY: json.dumps(dict(settings), sort_keys=True)}
    return save_safetensors(dict(tensors), metadata=metadata)


def decode(data: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the JSON settings of a payload :func:`encode` made.

    Raises:
        ValueError: not a safetensors payload, or its settings are not a JSON object.
    """
    if len(data) < 8:
        raise ValueError(f"not a safetensors payload ({len(data)} bytes)")
    (header_size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + header_size])
        tensors = load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"not a safetensors payload ({error})") from None
    text = (header.get("__metadata__") or {}).get(METADATA_KEY, "{}")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"its {METADATA_KEY!r} metadata is not JSON ({error})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"its {METADATA_KEY!r} metadata is not a JSON object")
    return tensors, settings


def mismatches(expected: Mapping[str, Any], served: Mapping[str, Any]) -> list[str]:
    """``"key: X expected, Y served"`` for every setting of ``expected`` (None: any) that
    ``served`` does not have.

    Example:
        >>> mismatches({"k": 8, "seed": None}, {"k": 16, "seed": 0})
        ['k: 8 expected, 16 served']
    """
    return [
        f"{key}: {value!r} expected, {served.get(key)!r} served"
        for key, value in expected.items()
        if value is not None and served.get(key) != value
    ]
