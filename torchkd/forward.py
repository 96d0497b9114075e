"""How torchkd runs any model, student or teacher: named inputs (a mapping, Hugging Face
style) go in as keywords, anything else as the one argument; and where the logits are in what
the model returns (a tensor, a tuple, a mapping or ``ModelOutput``, an object's attribute)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

__all__ = ["call_model", "select_logits"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping of named inputs (Hugging Face style), else
    ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def select_logits(output: Any, key: str | int | None = None) -> Tensor:
    """The logits tensor inside a model output.

    A tensor is returned as is (``key`` is not needed). A tuple or list gives ``output[key]``
    (default ``0``); a mapping, including a Hugging Face ``ModelOutput``, gives
    ``output[key]`` (default ``"logits"``); any other object gives its attribute ``key``
    (default ``logits``).

    Raises:
        KeyError: the key is missing (the message lists what the output holds).
        TypeError: the selected value is not a tensor.

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 3)
        >>> select_logits({"logits": logits, "hidden": None}) is logits
        True
        >>> select_logits((logits, None)) is logits
        True
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        position = 0 if key is None else key
        if not isinstance(position, int) or not -len(output) <= position < len(output):
            raise KeyError(
                f"output_key {key!r} does not index the model's {type(output).__name__} output "
                f"of length {len(output)}"
            )
        selected = output[position]
    elif isinstance(output, Mapping):
        name = "logits" if key is None else key
        if name not in output:
            raise KeyError(
                f"model output has no key {name!r} (keys: {list(output.keys())}); set output_key"
            )
        selected = output[name]
    else:
        name = "logits" if key is None else key
        if not isinstance(name, str) or not hasattr(output, name):
            raise KeyError(
                f"model output of type {type(output).__name__} has no attribute {name!r}; "
                "set output_key"
            )
        selected = getattr(output, name)
    if not isinstance(selected, Tensor):
        raise TypeError(
            f"selected logits (output_key={key!r}) must be a tensor, got {type(selected).__name__}"
        )
    return selected
