"""The batch forms the engine reads: :func:`as_batch` (a dict, or the tuples a
``TensorDataset`` yields, as the dict the Distiller reads) and :func:`to_device`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["as_batch", "to_device"]


def as_batch(
    batch: Mapping[str, Any] | Sequence[Any], inputs_key: str = "inputs", labels_key: str = "labels"
) -> Mapping[str, Any]:
    """A batch as the dict the engine reads: a dict passes through; the ``(inputs, labels)``
    or ``(inputs,)`` tuples a ``TensorDataset`` yields become ``{"inputs": ..., "labels": ...}``.

    Example:
        >>> import torch
        >>> sorted(as_batch((torch.zeros(2, 3), torch.tensor([0, 1]))))
        ['inputs', 'labels']
    """
    if isinstance(batch, Mapping):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return dict(zip((inputs_key, labels_key), batch, strict=False))
    described = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        described += f" of {len(batch)} entries"
    raise TypeError(
        f"a batch must be a dict ({inputs_key!r}, optional {labels_key!r} and 'index') or an "
        f"(inputs, labels) tuple, got {described}; for more entries yield dicts, e.g. with "
        "torchkd.data.TensorDictDataset"
    )


def to_device(batch: Mapping[str, Any] | Sequence[Any], device: torch.device) -> dict[str, Any]:
    """``batch`` (a dict, or an ``(inputs, labels)`` tuple: see
    :func:`as_batch`) as a dict with every tensor moved to ``device``,
    including those of nested mappings (e.g. ``inputs = {"input_ids", "attention_mask"}``).

    Example:
        >>> moved = to_device({"inputs": {"input_ids": torch.ones(1, 2)}}, torch.device("cpu"))
        >>> moved["inputs"]["input_ids"].device.type
        'cpu'
    """
    return _moved(as_batch(batch), device)


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: _moved(item, device) for key, item in value.items()}
    return value
