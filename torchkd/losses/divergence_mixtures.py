r"""Entries of :mod:`torchkd.losses.divergence_table` that mix: skew KLs and adaptive KL.

The skew KLs mix the two distributions before comparing them (DistiLLM: Ko et al.,
"DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024); adaptive
KL mixes forward and reverse KL per token (AKL: Wu et al., "Rethinking Kullback-Leibler
Divergence in Knowledge Distillation for Large Language Models", COLING 2025). Each entry has
the dense, chunked and bucket forms the table's docstring describes; their parameter (the
forms' ``beta`` argument) is the skew :math:`\lambda` or AKL's head mass :math:`\mu`.

Both skew KLs are :math:`\mathrm{KL}(u \| m)` with :math:`m = \lambda u + (1 - \lambda) v`
(``u`` the side the KL is taken from). With :math:`\sigma = \log(u / m)`, the share of ``v``
in the mixture :math:`w = (1 - \lambda) v / m \in [0, 1]`, :math:`\mathcal{D} = \sum u \sigma`
and :math:`S = \sum u w`, the gradients w.r.t. the softened logits of the two sides are

.. math::
    \partial_v = v S - u w, \qquad \partial_u = u (\sigma + w - \mathcal{D} - S)

(from :math:`\partial \mathcal{D} / \partial v_j = -u_j w_j / v_j` and
:math:`\partial \mathcal{D} / \partial u_j = \sigma_j + w_j`, up to a constant, through the
softmax); at :math:`\lambda = 0` they are forward KL's. The log-ratios come from
:func:`~torchkd.losses._common.jsd_log_ratios`, stable for every :math:`\lambda \in [0, 1)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchkd.losses._common import jsd_log_ratios
from torchkd.losses._divergence_steps import (
    Buffers,
    DenseResult,
    Entry,
    kept_terms,
    mixture_ratios,
    row_dot,
    weighted,
    weighted_row_sum,
)

__all__ = ["AKL", "SkewForwardKL", "SkewReverseKL"]


# --------------------------------------------------------------------------- skew KL


def _skew_dense(
    u_log: Tensor, v_log: Tensor, skew: float, safe: bool, u_grad: bool, v_grad: bool
) -> DenseResult:
    """Rows of ``KL(u || skew u + (1 - skew) v)``, the gradients of ``u`` and ``v`` (or None)."""
    u, v = u_log.exp(), v_log.exp()
    absent = (u == 0) & (v == 0) if safe else None
    u_ratio, v_ratio = mixture_ratios(u_log, v_log, skew, absent)
    share = (1.0 - skew) * v_ratio.exp()  # w
    rows = weighted_row_sum(u, u_ratio, safe)
    mean_share = torch.linalg.vecdot(u, share).unsqueeze(-1)  # S
    u_gradient = v_gradient = None
    if u_grad:
        u_gradient = weighted(u, u_ratio + share - (rows.unsqueeze(-1) + mean_share), safe)
    if v_grad:
        v_gradient = v * mean_share - u * share
    return rows, u_gradient, v_gradient


def _skew_chunked(
    u: Tensor, v: Tensor, buffers: Buffers, skew: float, u_grad: bool, v_grad: bool
) -> Tensor:
    """In place: rows of the skew KL; ``u`` and ``v`` <- their gradients (where asked for).

    Two fresh ``[chunk, V]`` tensors (the log-ratios) besides the work and scratch buffers.
    """
    n = u.shape[0]
    scratch = buffers.get("scratch", n)
    u_ratio, v_ratio = jsd_log_ratios(torch.sub(u, v, out=buffers.get("work", n)), skew)
    u.exp_()
    v.exp_()
    share = v_ratio.exp_().mul_(1.0 - skew)  # w
    rows = row_dot(u, u_ratio, scratch)
    mean_share = row_dot(u, share, scratch).unsqueeze(-1)  # S
    if v_grad:  # v S - u w, before u is overwritten
        v.mul_(mean_share).sub_(torch.mul(u, share, out=scratch))
    if u_grad:  # u (sigma + w - D - S)
        u.mul_(u_ratio.add_(share).sub_(mean_share.add_(rows.unsqueeze(-1))))
    return rows


def _skew_buckets(
    u_log: Tensor, v_log: Tensor, skew: float, student_is_u: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The bucket form: rows, the student's kept terms and tail coefficient (the student is
    ``u`` for the skew reverse KL, ``v`` for the forward one)."""
    u, v = u_log.exp(), v_log.exp()
    absent = (u == 0) & (v == 0)  # the empty tail
    u_ratio, v_ratio = mixture_ratios(u_log, v_log, skew, absent)
    share = (1.0 - skew) * v_ratio.exp()
    rows = weighted(u, u_ratio, safe=True).sum(-1)
    mean_share = (u * share).sum(-1, keepdim=True)
    if student_is_u:  # c = sigma + w - D - S
        coefficients = u_ratio + share - (rows.unsqueeze(-1) + mean_share)
        return rows, *kept_terms(u_log, coefficients)
    # c = S - (1 - skew) u / m: bounded by S + 1 / skew, finite where v underflows
    coefficients = mean_share - (1.0 - skew) * u_ratio.exp()
    return rows, *kept_terms(v_log, coefficients)


class SkewForwardKL(Entry):
    r"""Skew forward KL :math:`\mathcal{D} = \mathrm{KL}(p_T \| \lambda p_T + (1 - \lambda) p_S)`
    (DistiLLM, Ko et al., ICML 2024), ``beta`` = :math:`\lambda \in [0, 1)`.

    The module docstring's form with :math:`u = p_T`, :math:`v = p_S`: :math:`\partial_a =
    p_S S - p_T w`, :math:`\partial_b = p_T (\sigma + w - \mathcal{D} - S)`. Buckets:
    :math:`c = S - (1 - \lambda) Q / M`. :math:`\lambda = 0` is forward KL; a positive
    :math:`\lambda` bounds the divergence by :math:`-\log \lambda`.
    """

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        skew: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        rows, teacher_gradient, student_gradient = _skew_dense(
            teacher_log, student_log, skew, safe, teacher_grad, student_grad
        )
        return rows, student_gradient, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, skew: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        rows = _skew_chunked(teacher, student, buffers, skew, teacher_grad, True)
        return rows, teacher if teacher_grad else None

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, skew: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _skew_buckets(teacher_log, student_log, skew, student_is_u=False)


class SkewReverseKL(Entry):
    r"""Skew reverse KL :math:`\mathcal{D} = \mathrm{KL}(p_S \| \lambda p_S + (1 - \lambda) p_T)`
    (DistiLLM, Ko et al., ICML 2024), ``beta`` = :math:`\lambda \in [0, 1)`.

    The module docstring's form with :math:`u = p_S`, :math:`v = p_T`: :math:`\partial_a =
    p_S (\sigma + w - \mathcal{D} - S)`, :math:`\partial_b = p_T S - p_S w`. Buckets:
    :math:`c = \sigma + w - \mathcal{D} - S`. :math:`\lambda = 0` is reverse KL; a positive
    :math:`\lambda` keeps it finite where the teacher's tail is empty.
    """

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        skew: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        return _skew_dense(student_log, teacher_log, skew, safe, student_grad, teacher_grad)

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, skew: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        rows = _skew_chunked(student, teacher, buffers, skew, True, teacher_grad)
        return rows, teacher if teacher_grad else None

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, skew: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        return _skew_buckets(student_log, teacher_log, skew, student_is_u=True)


# --------------------------------------------------------------------------- adaptive KL


def head_weight(teacher: Tensor, student: Tensor, mu: float) -> Tensor:
    r"""AKL's weight of forward KL per row, :math:`g_\text{head} / (g_\text{head} +
    g_\text{tail})` (1/2 where :math:`p_S = p_T`, both KLs then 0); computed without gradient.

    The head :math:`H` is the teacher's most likely token and every token whose teacher mass,
    ranked in descending order (ties by index) and summed up to and including it, is at most
    :math:`\mu`, as in the authors' released ``get_ratio`` (the token whose mass crosses
    :math:`\mu` is in the tail); :math:`g_\text{head} = \sum_{i \in H} |p_{T,i} - p_{S,i}|`,
    :math:`g_\text{tail}` the same over the rest. Sorts the rows.
    """
    teacher, student = teacher.detach(), student.detach()
    ranked, order = teacher.sort(dim=-1, descending=True, stable=True)
    inside = ranked.cumsum(-1) <= mu
    inside[..., 0] = True  # the top token is always in the head
    gaps = (ranked - student.gather(-1, order)).abs()
    head = torch.where(inside, gaps, 0.0).sum(-1)
    total = gaps.sum(-1)
    return torch.where(total > 0, head / total, 0.5)


class AKL(Entry):
    r"""Adaptive KL (AKL, Wu et al., "Rethinking Kullback-Leibler Divergence in Knowledge
    Distillation for Large Language Models", COLING 2025), ``beta`` = the head mass
    :math:`\mu \in [0, 1]`.

    .. math::
        \mathcal{D} = w_\text{head} \mathrm{KL}(p_T \| p_S)
        + w_\text{tail} \mathrm{KL}(p_S \| p_T), \qquad
        w_\text{head} = \frac{g_\text{head}}{g_\text{head} + g_\text{tail}} = 1 - w_\text{tail}

    with :math:`g` the teacher-student gaps over the teacher's head and tail
    (:func:`head_weight`). The weights are constants (no gradient flows through them, as in the
    paper's implementation), so the gradients are the weighted KL gradients:
    :math:`\partial_a = w_h (p_S - p_T) + w_t p_S (\log(p_S/p_T) - R)`,
    :math:`\partial_b = w_h p_T (\log(p_T/p_S) - F) + w_t (p_T - p_S)` (:math:`F`, :math:`R`
    the forward and reverse KL rows). Not the derivative of :math:`\mathcal{D}`, whose weights
    move with :math:`p_S`. Buckets: the weights of the ``k + 1`` bucket distributions, the
    tail ranked by its mass like a token. The chunked form sorts each chunk (a few more
    ``[chunk, V]`` tensors).
    """

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        mu: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        student, teacher = student_log.exp(), teacher_log.exp()
        head = head_weight(teacher, student, mu).unsqueeze(-1)
        log_ratio = teacher_log - student_log
        forward = weighted_row_sum(teacher, log_ratio, safe).unsqueeze(-1)
        reverse = weighted_row_sum(student, -log_ratio, safe).unsqueeze(-1)
        rows = (head * forward + (1.0 - head) * reverse).squeeze(-1)
        student_gradient = teacher_gradient = None
        if student_grad:
            reverse_part = weighted(student, -log_ratio - reverse, safe)
            student_gradient = head * (student - teacher) + (1.0 - head) * reverse_part
        if teacher_grad:
            forward_part = weighted(teacher, log_ratio - forward, safe)
            teacher_gradient = head * forward_part + (1.0 - head) * (teacher - student)
        return rows, student_gradient, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, mu: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        n = student.shape[0]
        work, scratch = buffers.get("work", n), buffers.get("scratch", n)
        torch.sub(student, teacher, out=work)  # log p - log q
        student.exp_()
        teacher.exp_()
        head = head_weight(teacher, student, mu).unsqueeze(-1)
        tail = 1.0 - head
        reverse = row_dot(student, work, scratch).unsqueeze(-1)
        forward = -row_dot(teacher, work, scratch).unsqueeze(-1)
        teacher_gradient = None
        if teacher_grad:  # q (w_h (log(q / p) - F) + w_t) - w_t p
            torch.add(work, forward, out=scratch).mul_(-head).add_(tail).mul_(teacher)
            teacher_gradient = scratch.addcmul_(student, tail, value=-1.0)
        # p (w_t (log(p / q) - R) + w_h) - w_h q
        student.mul_(work.sub_(reverse).mul_(tail).add_(head)).addcmul_(teacher, head, value=-1.0)
        return (head * forward + tail * reverse).squeeze(-1), teacher_gradient

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, mu: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        teacher, student = teacher_log.exp(), student_log.exp()
        head = head_weight(teacher, student, mu).unsqueeze(-1)
        tail = 1.0 - head
        ratio = student_log - teacher_log
        forward = weighted(teacher, -ratio, safe=True).sum(-1, keepdim=True)
        reverse = weighted(student, ratio, safe=True).sum(-1, keepdim=True)
        rows = (head * forward + tail * reverse).squeeze(-1)
        mass = teacher.sum(-1, keepdim=True)
        # forward KL: P_i sum Q - Q_i (kept), sum Q - Q / P (tail); reverse: c = log(P / Q) - R
        kept = head * (student[:, :-1] * mass - teacher[:, :-1])
        kept = kept + tail * student[:, :-1] * (ratio[:, :-1] - reverse)
        tail_ratio = ratio[:, -1:]
        tail_coefficient = head * (mass - torch.exp(-tail_ratio)) + tail * (tail_ratio - reverse)
        return rows, kept, tail_coefficient.squeeze(-1)
