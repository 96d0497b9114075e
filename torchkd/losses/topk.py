"""Sparse (top-k) teacher targets for token-level distillation, and their bucket divergences.

A teacher that kept only its ``k`` most likely tokens per position (a cached teacher, as in
DistillKit's sparse top-k distillation) gives, per row, token ids ``i_1..i_k``, their
log-probabilities and optionally the log of the probability mass left outside them. The loss
compares the teacher and the student on ``k + 1`` *buckets*: the ``k`` kept tokens, one each,
and one tail bucket holding every other token of the vocabulary:

.. math::
    Q = (q_{i_1}, \\dots, q_{i_k}, q_\\text{tail}), \\qquad
    P = (p_{i_1}, \\dots, p_{i_k}, \\textstyle\\sum_{j \\notin K} p_j)

with :math:`p = \\mathrm{softmax}(z_S / T)` over the full vocabulary. Both are distributions over
the same ``k + 1`` outcomes, so every divergence of them is a proper one (forward KL is 0 exactly
when the student's bucket masses equal the teacher's), and by the data-processing inequality it is
at most the divergence of the full distributions it approximates. The tail is
``tail_log_mass`` when given, else :math:`\\log(1 - \\sum_k q_{i_k})` (0 mass when the given
log-probabilities already sum to 1, e.g. renormalized top-k). Each divergence's bucket form
(rows and the gradient w.r.t. the student's logits) is in :mod:`torchkd.losses.divergence_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from torchkd.losses._common import check_number, check_temperature, upcast

__all__ = ["TopKLogits"]

TAIL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TopKLogits:
    """A sparse teacher: the ``k`` most likely token ids per position and their log-probabilities.

    Attributes:
        token_ids: ``[..., k]`` int64 token ids, distinct within a row.
        log_probs: ``[..., k]`` the teacher's log-probabilities of those tokens, at the loss's
            temperature (the loss does not soften them again; it softens the student).
        tail_log_mass: ``[...]`` log of the probability of all other tokens, or None to take
            :math:`\\log(1 - \\sum_k e^{\\text{log\\_probs}})`.

    Example:
        >>> import torch
        >>> sparse = TopKLogits.from_logits(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), k=2)
        >>> sparse.token_ids
        tensor([[0, 1]])
        >>> round(sparse.tail_log_mass.exp().item(), 4)
        0.0566
    """

    token_ids: Tensor
    log_probs: Tensor
    tail_log_mass: Tensor | None = None

    @classmethod
    def from_logits(cls, logits: Tensor, k: int, temperature: float = 1.0) -> TopKLogits:
        """The top-``k`` of ``softmax(logits / T)`` with the exact tail mass (no gradient)."""
        check_temperature(temperature)
        check_number("k", k, integer=True)
        if not 1 <= k <= logits.shape[-1]:
            raise ValueError(f"k must be in [1, {logits.shape[-1]}] (the vocabulary), got {k}")
        with torch.no_grad():
            values = upcast(logits)
            log_probs = torch.log_softmax(values / temperature, dim=-1)
            top_log_probs, token_ids = log_probs.topk(k, dim=-1)
            rest = log_probs.scatter(-1, token_ids, float("-inf"))
            tail = torch.logsumexp(rest, dim=-1)
        return cls(token_ids, top_log_probs, tail)


def check_topk(targets: TopKLogits, rows_shape: torch.Size, vocab: int) -> None:
    """Validate a :class:`TopKLogits` against the rows' shape and the vocabulary size."""
    ids, log_probs, tail = targets.token_ids, targets.log_probs, targets.tail_log_mass
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64:
        raise TypeError(
            f"TopKLogits.token_ids must be an int64 tensor, got {getattr(ids, 'dtype', type(ids))}"
        )
    if not isinstance(log_probs, Tensor) or not log_probs.is_floating_point():
        raise TypeError("TopKLogits.log_probs must be a floating-point tensor")
    if ids.shape[:-1] != rows_shape or log_probs.shape != ids.shape:
        raise ValueError(
            f"TopKLogits.token_ids and log_probs must both have shape "
            f"[{', '.join(map(str, rows_shape))}, k] (the student's rows), got "
            f"{tuple(ids.shape)} and {tuple(log_probs.shape)}"
        )
    k = ids.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(
            f"TopKLogits must keep between 1 and {vocab} (the vocabulary) ids, got {k}"
        )
    if log_probs.requires_grad:
        raise ValueError("TopKLogits.log_probs requires grad, but sparse targets get none: detach")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"TopKLogits.token_ids must be in [0, {vocab}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    if k > 1 and ids.numel() and bool((ids.sort(-1).values.diff(dim=-1) == 0).any()):
        raise ValueError("TopKLogits.token_ids repeat an id within a row; ids must be distinct")
    if not bool(torch.isfinite(log_probs).all()) or bool((log_probs > TAIL_TOLERANCE).any()):
        raise ValueError("TopKLogits.log_probs must be finite log-probabilities (<= 0)")
    if tail is not None:
        if not isinstance(tail, Tensor) or tail.shape != rows_shape:
            raise ValueError(
                f"TopKLogits.tail_log_mass must have shape {tuple(rows_shape)}, got "
                f"{tuple(getattr(tail, 'shape', ()))}"
            )
        if bool(torch.isnan(tail).any()) or bool((tail > TAIL_TOLERANCE).any()):
            raise ValueError("TopKLogits.tail_log_mass must be log-masses (<= 0, -inf allowed)")
    else:
        total = log_probs.double().exp().sum(-1)
        if bool((total > 1 + TAIL_TOLERANCE).any()):
            raise ValueError(
                "TopKLogits.log_probs sum to more than 1 in some rows (max "
                f"{total.max().item():.6f}) and no tail_log_mass is given"
            )


def teacher_buckets(log_probs: Tensor, tail_log_mass: Tensor | None) -> Tensor:
    """``[n, k + 1]`` teacher log-masses: the kept tokens, then the tail."""
    if tail_log_mass is None:
        tail = torch.log((1.0 - log_probs.exp().sum(-1)).clamp_min(0.0))
    else:
        tail = tail_log_mass.to(log_probs.dtype)
    return torch.cat([log_probs, tail.unsqueeze(-1)], dim=-1)
