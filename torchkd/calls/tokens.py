r"""Token rows of the logit call conventions (``"labels"``, ``"logits"``, ``"logits_labels"``,
``"multi_teacher"``): the positions of ``[B, L, V]`` token logits a term reads, and how its
value is normalized so that a step's gradient is that of the whole global batch.

Positions. With token labels ``[B, L]`` a term reads the positions whose label is not ``-100``
and whose ``attention_mask`` (of the inputs mapping, where it has the labels' shape) is 1
(:func:`torchkd.lm.read_labels`); without labels, the positions whose ``attention_mask`` is 1.
When the student tensor's leading dimensions are those ``[B, L]``, every argument that has them
(both sides' logits, the labels, a per-token temperature) keeps only those ``n`` positions,
``[n, ...]``, before the loss sees it: padding and prompt positions enter neither the loss nor
its average. Terms on sample rows (``[B, C]`` logits, ``[B]`` labels) are unchanged.

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

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from torchkd.calls.base import Call, Owner
from torchkd.capture import Capture
from torchkd.lm.tokens import TOKEN_NORMALIZER, TokenNormalizer, is_token_labels, read_labels
from torchkd.losses.distributed import gather_rows_with_grad, world_size
from torchkd.terms import Term

__all__ = ["AVERAGING_REDUCTIONS", "TokenRowsCall", "averages_rows", "token_normalizer"]

AVERAGING_REDUCTIONS = ("batchmean", "mean")


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
    return getattr(loss, "reduction", "batchmean") in AVERAGING_REDUCTIONS


def _positions(labels: Any, attention_mask: Tensor | None) -> Tensor | None:
    """bool ``[B, L]``: the positions a token term reads (None: no token positions known)."""
    if is_token_labels(labels):
        return read_labels(labels, attention_mask) != -100
    return None if attention_mask is None else attention_mask.bool()


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
    :meth:`raw_arguments`; positions are selected, rows gathered (``global_batch``) and the
    value normalized here."""

    token_rows = True

    def raw_arguments(
        self,
        term: Term,
        capture: Capture,
        batch: Mapping[str, Any],
        owner: Owner,
        temperature: float | Tensor | None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """The loss's arguments with every position (``args[0]`` is the student's tensor, the
        first ``2`` are gathered under ``global_batch``)."""
        raise NotImplementedError

    def arguments(self, term, capture, batch, owner, temperature):
        args, kwargs, _ = self._token_arguments(term, capture, batch, owner, temperature)
        return args, kwargs

    def value(self, term, capture, batch, owner, temperature, loss):
        args, kwargs, rows = self._token_arguments(term, capture, batch, owner, temperature)
        value = loss(*args, **kwargs)
        normalizer = token_normalizer(batch)
        if rows is None or normalizer is None or not averages_rows(loss):
            return value
        return value * (rows / normalizer.divisor)

    def _token_arguments(
        self,
        term: Term,
        capture: Capture,
        batch: Mapping[str, Any],
        owner: Owner,
        temperature: float | Tensor | None,
    ) -> tuple[list[Any], dict[str, Any], float | None]:
        """The loss's arguments at the positions the term reads, and the rows its value
        averages over in this process's share (``n / P``; None: not token rows)."""
        args, kwargs = self.raw_arguments(term, capture, batch, owner, temperature)
        positions = _positions(batch.get(owner.labels_key), capture.attention_mask)
        student = args[0]
        if not (
            positions is not None
            and isinstance(student, Tensor)
            and student.dim() > positions.dim()
            and student.shape[: positions.dim()] == positions.shape
        ):
            positions = None
        else:
            args = [_select(value, positions) for value in args]
            kwargs = {name: _select(value, positions) for name, value in kwargs.items()}
        processes = 1
        if self.gathers and term.global_batch and owner.training:
            args = [gather_rows_with_grad(value) for value in args[:2]] + args[2:]
            processes = world_size()
        rows = None if positions is None else args[0].shape[0] / processes
        return args, kwargs, rows
