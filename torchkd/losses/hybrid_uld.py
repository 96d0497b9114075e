"""The hybrid cross-tokenizer loss: KL over the tokens both vocabularies share, ULD over the
rest.

A student and a teacher with different tokenizers often share many token strings
(:func:`torchkd.data.shared_vocabulary.shared_vocabulary`). Given the ``K`` shared pairs
:math:`(s_k, t_k)` (student id, teacher id), per token, with :math:`p = \\mathrm{softmax}(z_S /
T)` over the student's :math:`V_S` entries and :math:`q = \\mathrm{softmax}(z_T / T)` over the
teacher's :math:`V_T`:

- on the shared part, the two distributions renormalised to the shared tokens,
  :math:`\\tilde p_k = p_{s_k} / \\sum_j p_{s_j}` and :math:`\\tilde q_k = q_{t_k} / \\sum_j
  q_{t_j}` (the softmax of the shared logits alone), compared by the forward KL;
- on the rest, the entries outside the map (:math:`p_r`: the student's :math:`V_S - K`,
  :math:`q_r`: the teacher's :math:`V_T - K`, not renormalised), compared by ULD
  (:mod:`torchkd.losses.uld`: sorted descending, zero-padded, L1):

.. math::
    h(p, q) = T^2 \\sum_{k=1}^{K} \\tilde q_k \\log \\frac{\\tilde q_k}{\\tilde p_k}
    + \\sum_{i} \\big| p_{r,(i)} - q_{r,(i)} \\big|,
    \\qquad
    \\ell = \\frac{1}{D} \\sum_{t \\,\\text{valid}} \\big[ h(p_t, q_t)
    + w \\, \\mathrm{CE}(z_{S,t}, y_t) \\big].

It reduces to the knowledge-distillation KL :math:`T^2\\,\\mathrm{KL}(q \\| p)` when the
vocabularies are one (every token shared, the identity map: the rest is empty) and to
:math:`\\mathrm{ULD}(p, q)` when they share nothing (:math:`K = 0`: the KL part is 0). The
gradient flows through both softmaxes of the student and the sort (as in ULD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses._module import keyword_options
from torchkd.losses.registry import register
from torchkd.losses.uld import (
    ULDLoss,
    check_uld_inputs,
    check_uld_options,
    reduced_rows,
    sorted_distance,
)

__all__ = ["HybridULDLoss", "hybrid_uld_loss"]


def check_shared_ids(shared_ids: Any, student_vocab: int, teacher_vocab: int) -> Tensor:
    """``shared_ids`` as an int64 ``[K, 2]`` tensor of distinct (student id, teacher id)
    pairs inside both vocabularies (None: ``K = 0``), or a ``TypeError``/``ValueError`` naming
    it."""
    ids = torch.as_tensor([] if shared_ids is None else shared_ids)
    if ids.numel() == 0:
        return torch.zeros((0, 2), dtype=torch.long)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"shared_ids must hold integer token ids, got {ids.dtype}")
    ids = ids.long()
    if ids.dim() != 2 or ids.shape[1] != 2:
        raise ValueError(
            f"shared_ids must be [K, 2] (student id, teacher id) pairs, got {tuple(ids.shape)}"
        )
    for column, (side, vocab) in enumerate(
        (("student", student_vocab), ("teacher", teacher_vocab))
    ):
        values = ids[:, column]
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= vocab):
            raise ValueError(
                f"shared_ids: {side} ids must lie in [0, {vocab}) (the {side}'s logits), got "
                f"[{int(values.min())}, {int(values.max())}]"
            )
        if values.unique().numel() != values.numel():
            raise ValueError(f"shared_ids: a {side} id appears twice (the map must be one-to-one)")
    return ids


def _rest(vocab: int, shared: Tensor) -> Tensor:
    """The ids of ``range(vocab)`` outside ``shared``."""
    keep = torch.ones(vocab, dtype=torch.bool, device=shared.device)
    keep[shared] = False
    return keep.nonzero().squeeze(-1)


def hybrid_rows(
    student_logits: Tensor, teacher_logits: Tensor, shared_ids: Tensor, temperature: float
) -> Tensor:
    """``[n]`` hybrid of each row of ``[n, V_S]`` and ``[n, V_T]`` logits (no reduction)."""
    student_shared, teacher_shared = shared_ids[:, 0], shared_ids[:, 1]
    values = student_logits.new_zeros(student_logits.shape[0])
    if shared_ids.shape[0]:
        log_p = torch.log_softmax(student_logits[:, student_shared] / temperature, dim=-1)
        log_q = torch.log_softmax(teacher_logits[:, teacher_shared] / temperature, dim=-1)
        # 0 log 0 = 0: entries the teacher gives no mass (-inf logits) are left out
        absent = torch.isneginf(log_q)
        log_q, log_p = log_q.masked_fill(absent, 0.0), log_p.masked_fill(absent, 0.0)
        kl = (log_q.exp().masked_fill(absent, 0.0) * (log_q - log_p)).sum(dim=-1)
        values = values + temperature**2 * kl
    student_rest = _rest(student_logits.shape[-1], student_shared)
    teacher_rest = _rest(teacher_logits.shape[-1], teacher_shared)
    if student_rest.numel() or teacher_rest.numel():
        p = torch.softmax(student_logits / temperature, dim=-1)[:, student_rest]
        q = torch.softmax(teacher_logits / temperature, dim=-1)[:, teacher_rest]
        values = values + sorted_distance(p, q)
    return values


def hybrid_uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    shared_ids: Tensor | Sequence[Sequence[int]] | None = None,
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    """KL on the shared tokens plus ULD on the rest (formula: the module docstring).

    Rows, ``D``, precision and the empty case are those of
    :func:`~torchkd.losses.uld_loss`.

    Args:
        student_logits: ``[..., V_S]``.
        teacher_logits: ``[..., V_T]`` (the same leading dims).
        labels: ``[...]`` student token ids or ``ignore_index``.
        shared_ids: ``[K, 2]`` one-to-one (student id, teacher id) pairs of the tokens both
            vocabularies hold (:func:`torchkd.data.shared_vocabulary.shared_vocabulary`; a
            recipe with ``data.kwargs.tokenizer`` fills it in). None or empty: ``K = 0``, the
            loss is ULD.
        temperature: :math:`T > 0` applied to both sides (a float).
        hard_label_weight: weight :math:`w \\ge 0` of the student's cross-entropy (T = 1).
        ignore_index: label value of rows to leave out.
        mask: bool ``[...]``: rows to include.
        num_items_in_batch: the normalizer ``D`` for ``"batchmean"``.
        reduction: ``"batchmean"`` (default) or ``"sum"``.

    Example:
        >>> student = torch.tensor([[1.0, 2.0, 0.0]])
        >>> teacher = torch.tensor([[2.0, 1.0]])  # teacher id 0 is student id 1, 1 is 0
        >>> round(hybrid_uld_loss(student, teacher, shared_ids=[[1, 0], [0, 1]]).item(), 4)
        0.09
    """
    check_uld_options(locals())
    check_uld_inputs(student_logits, teacher_logits)
    shared = check_shared_ids(shared_ids, student_logits.shape[-1], teacher_logits.shape[-1])
    shared = shared.to(student_logits.device)

    def row_values(student: Tensor, teacher: Tensor, selected: Tensor | None = None) -> Tensor:
        values = hybrid_rows(student, teacher, shared, temperature)
        if hard_label_weight > 0:
            values = values + hard_label_weight * F.cross_entropy(
                student, selected, reduction="none"
            )
        return values

    return reduced_rows(
        row_values,
        student_logits,
        teacher_logits,
        labels,
        mask=mask,
        ignore_index=ignore_index,
        hard_label_weight=hard_label_weight,
        num_items_in_batch=num_items_in_batch,
        reduction=reduction,
    )


@register(
    "hybrid_uld",
    functional=hybrid_uld_loss,
    signature="logits_labels",
    family="logit",
    compares_shapes=True,
)
class HybridULDLoss(ULDLoss):
    """Module form of :func:`hybrid_uld_loss`; a call may override the stored ``temperature``.

    Example:
        >>> loss = HybridULDLoss(shared_ids=[[0, 0]], temperature=2.0)
        >>> loss.shared_ids, loss.temperature
        ([[0, 0]], 2.0)
    """

    functional = staticmethod(hybrid_uld_loss)
    options = keyword_options(hybrid_uld_loss, ("mask", "num_items_in_batch"))
