"""How each model runs in one forward pass of a :class:`~torchkd.distiller.Distiller` and
what is kept of it: logits, a causal LM's final hidden state, tapped outputs.

A model runs in full (its logits), or, a causal LM whose logits no term reads, its body alone
(:func:`torchkd.lm.last_hidden_state`: the ``[tokens x vocabulary]`` logits are never built),
or not at all (a causal-LM teacher no term reads, e.g. all its terms read a teacher cache).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchkd.forward import call_model, select_logits
from torchkd.lm import last_hidden_state
from torchkd.taps import Taps

__all__ = ["Capture", "ModelPlan", "RunMode", "num_rows", "run_model", "valid_positions"]

# How a model runs: its full forward, its causal-LM body alone (no logits), or not at all.
RunMode = Literal["full", "body", "skip"]


@dataclass(frozen=True)
class ModelPlan:
    """How one model runs in a forward pass and what is kept of it."""

    paths: list[str]
    mode: RunMode
    hidden: bool  # keep the final hidden state (a "hidden_states" term reads it)


@dataclass
class Capture:
    """Everything one forward pass of the models produced (None: not computed)."""

    student_logits: Tensor | None
    student_hidden: Tensor | None
    student_taps: Taps | dict[str, Any]
    teacher_logits: list[Tensor | None]
    teacher_hidden: list[Tensor | None]
    teacher_taps: list[Taps | dict[str, Any]]
    attention_mask: Tensor | None


def run_model(
    model: nn.Module, plan: ModelPlan, inputs: Any, output_key: str | int | None
) -> tuple[Tensor | None, Tensor | None, Taps | dict[str, Any]]:
    """``model``'s logits (None for its body alone), final hidden state (when the plan keeps
    it) and taps at the plan's paths (no hooks at all when nothing is tapped)."""
    if plan.mode == "skip":
        return None, None, {}
    with ExitStack() as stack:
        taps: Taps | dict[str, Any] = (
            stack.enter_context(Taps(model, plan.paths)) if plan.paths else {}
        )
        if plan.mode == "body" and not _fsdp_wrapped(model):
            return None, last_hidden_state(model, inputs), taps
        hidden: list[Tensor] = []
        if plan.hidden:
            stack.callback(model.get_decoder().register_forward_hook(_keep_hidden(hidden)).remove)
        logits = select_logits(call_model(model, inputs), output_key)
        return logits, hidden[0] if hidden else None, taps


def _fsdp_wrapped(model: nn.Module) -> bool:
    """Whether ``model`` is an FSDP2 unit: its body alone would run on sharded parameters
    (the unit gathers them in its own forward), so it runs in full."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _keep_hidden(store: list[Tensor]) -> Callable[[nn.Module, Any, Any], None]:
    """A forward hook on a causal LM's body that keeps its last hidden state in ``store``."""

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:  # as last_hidden_state reads it: a tuple's first entry, or a tensor
            hidden = output[0] if isinstance(output, (tuple, list)) else output
        store[:] = [hidden]

    return keep


def valid_positions(value: Tensor | list[Tensor], mask: Tensor) -> Tensor | list[Tensor]:
    """The ``[B, L, ...]`` rows of ``value`` (each tensor of a list) where ``mask`` [B, L] is
    True, as ``[n, ...]``; tensors of other shapes unchanged."""
    if isinstance(value, list):
        return [valid_positions(tensor, mask) for tensor in value]  # type: ignore[misc]
    if value.dim() >= 3 and value.shape[:2] == mask.shape:
        return value[mask]
    return value


def num_rows(inputs: Any, capture: Capture) -> int:
    """The batch's rows: the first dimension of the inputs (the first tensor of a mapping)."""
    values = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    first = next((value for value in values if isinstance(value, Tensor)), None)
    if first is not None and first.dim() > 0:
        return int(first.shape[0])
    computed = (
        capture.student_logits if capture.student_logits is not None else capture.student_hidden
    )
    return 0 if computed is None else int(computed.shape[0])
