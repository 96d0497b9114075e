r"""Token rows of the logit call conventions (``"labels"``, ``"logits"``, ``"logits_labels"``,
``"multi_teacher"``): the positions of ``[B, L, V]`` token logits a term reads, and how its
value is normalized so that a step's gradient is that of the whole global batch.

Positions. With token labels ``[B, L]`` a term reads the positions whose label is not ``-100``
and whose ``attention_mask`` (of the inputs mapping, where it has the labels' shape) is 1
(:func:`torchkd.lm.read_labels`); without labels, the positions whose ``attention_mask`` is 1.
When the student tensor's leading dimensions are those ``[B, L]``, the loss gets them as its
``mask=`` (every registered logit loss takes one, and leaves the other rows out of its value
and its average; with none left its value is exactly 0, its graph intact). A loss without a
``mask`` keyword, and ``global_batch`` (which gathers rows of every process, whose lengths
differ), get instead the ``n`` positions alone, ``[n, ...]``, of every argument that has the
``[B, L]`` dimensions (both sides' logits, the labels, a per-token temperature). Either way
padding and prompt positions enter neither the loss nor its average. Terms on sample rows
(``[B, C]`` logits, ``[B]`` labels) are unchanged.

Normalization. A loss that averages over its rows (``reduction`` ``"batchmean"`` or ``"mean"``;
one without a ``reduction`` attribute is taken to average, the losses' default) returns
:math:`S / n` (``"mean"``: also divided by the class count) for the summed value :math:`S` of
its ``n`` rows. With a :class:`~torchkd.lm.TokenNormalizer` in the batch (divisor
:math:`D = N / (G W)`, ``batch["token_normalizer"]``), the term's value is rescaled to

.. math::
    \frac{S}{n} \cdot \frac{n / P}{D} = \frac{S}{P\,D},

with :math:`P = W` where ``global_batch`` gathered every process's selected rows (each process
then computes the same loss of all of them), else :math:`P = 1`. The training loop divides each
micro-batch's loss by :math:`G` and DDP / FSDP average over the :math:`W` processes, so the
step's loss is :math:`\sum_{g, r} S_{g, r} / N`: every valid token of the step weighs the same,
however unevenly they fall over micro-batches and processes. A loss that couples its rows (DIST's
intra-class correlation over the batch) is not a sum over rows: it is the global batch's only
with ``global_batch`` and one micro-batch per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from torchkd.calls.base import Call
from torchkd.capture import Capture
from torchkd.lm.tokens import (
    IGNORE_INDEX,
    TOKEN_NORMALIZER,
    TokenNormalizer,
    is_token_labels,
    read_labels,
)
from torchkd.losses.distributed import gather_rows_with_grad, world_size

__all__ = ["TokenRowsCall", "averages_rows", "token_normalizer"]


def token_normalizer(batch: Mapping[str, Any]) -> TokenNormalizer | None:
    """``batch["token_normalizer"]`` (None when absent), which must be a TokenNormalizer."""
    normalizer = batch.get(TOKEN_NORMALIZER)
    if normalizer is not None and not isinstance(normalizer, TokenNormalizer):
        raise TypeError(
            f"batch[{TOKEN_NORMALIZER!r}] must be a torchkd.lm.TokenNormalizer, got "
            f"{type(normalizer).__name__}"
        )
    return normalizer


def averages_rows(loss: Callable[..., Tensor]) -> bool:
    """Whether ``loss`` averages over its rows (its ``reduction``, ``"batchmean"`` if none)."""
    return getattr(loss, "reduction", "batchmean") in ("batchmean", "mean")


def _positions(labels: Any, attention_mask: Tensor | None) -> Tensor | None:
    """bool ``[B, L]``: the positions a token term reads (None: no token positions known)."""
    if is_token_labels(labels):
        return read_labels(labels, attention_mask) != IGNORE_INDEX
    return None if attention_mask is None else attention_mask.bool()


def _takes_mask(loss: Callable[..., Tensor]) -> bool:
    """Whether ``loss`` (its ``forward`` for a module) takes a ``mask=`` keyword."""
    function = loss.forward if isinstance(loss, nn.Module) else loss
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == "mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _token_positions(student: Any, labels: Any, capture: Capture) -> Tensor | None:
    """The positions of the term's token rows it reads: None unless the student tensor's
    leading dimensions are those of the positions (token labels or attention mask)."""
    positions = _positions(labels, capture.attention_mask)
    if positions is None or not isinstance(student, Tensor) or student.dim() <= positions.dim():
        return None
    return positions if student.shape[: positions.dim()] == positions.shape else None


def _gathered(args: list[Any]) -> list[Any]:
    """``global_batch``: the rows of every process of the first two arguments (both sides)."""
    return [gather_rows_with_grad(value) for value in args[:2]] + args[2:]


def _select(value: Any, positions: Tensor) -> Any:
    """``value[positions]`` for a tensor whose leading dimensions are ``positions``' (each
    tensor of a list); anything else unchanged."""
    if isinstance(value, list):
        return [_select(item, positions) for item in value]
    if isinstance(value, Tensor) and value.shape[: positions.dim()] == positions.shape:
        return value[positions]
    return value


class TokenRowsCall(Call):
    """A logit convention whose rows may be tokens (see the module docstring): subclasses give
    :meth:`arguments` at every position (``args[0]`` the student's tensor; the first two are
    gathered under ``global_batch``); :meth:`value` keeps the positions the term reads, gathers
    and normalizes."""

    token_rows = True

    def value(self, term, capture, batch, owner, temperature, loss):
        args, kwargs = self.arguments(term, capture, batch, owner, temperature)
        positions = _token_positions(args[0], batch.get(owner.labels_key), capture)
        gathered = self.gathers and term.global_batch and owner.training
        if positions is None:
            return loss(*(_gathered(args) if gathered else args), **kwargs)
        if gathered or not _takes_mask(loss):
            args = [_select(value, positions) for value in args]
            kwargs = {name: _select(value, positions) for name, value in kwargs.items()}
        else:  # the loss leaves the other positions out itself
            kwargs = {**kwargs, "mask": positions}
        rows: float | Tensor = positions.sum()
        if gathered:
            args = _gathered(args)
            rows = args[0].shape[0] / world_size()
        value = loss(*args, **kwargs)
        normalizer = token_normalizer(batch)
        if normalizer is None or not averages_rows(loss):
            return value
        rows = rows.to(value.dtype) if isinstance(rows, Tensor) else rows
        return value * (rows / normalizer.divisor)
