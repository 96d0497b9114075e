"""A causal LM's body (final hidden states, no logits) and its output projection.

A causal LM computes ``logits = s * softcap(h W^T + b)`` from the final hidden states ``h`` of
its body. Token-level losses take ``h`` and ``W`` (:func:`torchkd.losses.fused_linear_kd_loss`)
so that the ``[tokens x vocabulary]`` logits are never built; :func:`last_hidden_state` runs the
body only and :func:`output_projection` returns ``W``, ``b`` and the model family's scale and
softcap. Any Hugging Face ``*ForCausalLM`` qualifies (``get_decoder()`` and
``get_output_embeddings()``), as does a module that has those two methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["OutputProjection", "is_causal_lm", "last_hidden_state", "output_projection"]


@dataclass(frozen=True)
class OutputProjection:
    """A causal LM's output layer: ``logits = logit_scale * softcap(h W^T + b)``.

    Attributes:
        weight: ``[V, H]`` (``lm_head.weight``; tied to the input embeddings in many models).
        bias: ``[V]`` or None.
        logit_scale: a constant factor on the logits (Cohere's ``logit_scale``), 1 for most.
        softcap: final-logit softcap ``c`` of ``c * tanh(z / c)`` (Gemma 2's
            ``final_logit_softcapping``), None for most.
    """

    weight: Tensor
    bias: Tensor | None = None
    logit_scale: float = 1.0
    softcap: float | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """The full logits of ``hidden`` (for evaluation and small vocabularies only)."""
        logits = nn.functional.linear(hidden, self.weight, self.bias)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits * self.logit_scale if self.logit_scale != 1.0 else logits


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` exposes a body and an output projection (see the module docstring).

    Every Hugging Face model has both methods; an encoder's ``get_output_embeddings()`` is
    None, so it is not a causal LM here."""
    methods = callable(getattr(model, "get_decoder", None)) and callable(
        getattr(model, "get_output_embeddings", None)
    )
    return methods and model.get_output_embeddings() is not None


def _check_causal_lm(model: nn.Module, what: str) -> None:
    if not is_causal_lm(model):
        raise TypeError(
            f"{what} must be a causal language model with get_decoder() and "
            f"get_output_embeddings() (a transformers *ForCausalLM), got {type(model).__name__}"
        )


def output_projection(model: nn.Module, what: str = "model") -> OutputProjection:
    """The output projection of the causal LM ``model`` (``what`` names it in errors)."""
    _check_causal_lm(model, what)
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise TypeError(
            f"{what}.get_output_embeddings() must be a linear layer with a [V, H] weight, got "
            f"{type(head).__name__}"
        )
    config = getattr(model, "config", None)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    return OutputProjection(
        weight=weight,
        bias=getattr(head, "bias", None),
        logit_scale=1.0 if scale is None else float(scale),
        softcap=None if softcap is None else float(softcap),
    )


def last_hidden_state(model: nn.Module, inputs: Mapping[str, Any], what: str = "model") -> Tensor:
    """``[B, L, H]`` final hidden states of the causal LM ``model`` for ``inputs`` (the model's
    keyword arguments: ``input_ids``, ``attention_mask``, ...), computed by its body alone: no
    logits are built. Forward hooks on the body's submodules (taps) fire as in a full call."""
    _check_causal_lm(model, what)
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"{what}: a causal LM takes a mapping of inputs (input_ids, attention_mask, ...), "
            f"got {type(inputs).__name__}"
        )
    body_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    output = model.get_decoder()(**body_inputs)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:
        hidden = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(hidden, Tensor):
        raise TypeError(
            f"{what}.get_decoder() returned {type(output).__name__} without a last_hidden_state"
        )
    return hidden
