r"""The one table of divergences: each formula with its closed-form gradients, in three forms.

Every divergence :math:`\mathcal{D}(p_T, p_S)` of the logit losses is an entry of
:data:`DIVERGENCES`, a class whose docstring gives the formula and whose static methods compute
it from the log-probabilities of a block of rows, softened: :math:`a = z_S / T`,
:math:`b = z_T / T`, :math:`\log p = \mathrm{log\_softmax}`. The gradients are w.r.t. ``a``
(and ``b``); the kernels apply the temperature's factors. ``beta`` is the entry's one
parameter: JSD's mixture weight β, the skew KLs' λ, AKL's head mass μ (ignored by the others).
The skew KLs and AKL are in :mod:`torchkd.losses.divergence_mixtures`, the shared steps in
:mod:`torchkd.losses._divergence_steps`. The forms:

- ``dense(student_log, teacher_log, beta, safe=, student_grad=, teacher_grad=)``: rows and
  gradients in fresh tensors (:mod:`torchkd.losses.kl`). Without ``safe``, a zero probability
  times an infinite log-ratio gives NaN in the row; callers check the rows and redo non-finite
  ones with ``safe=True``, which gives such terms 0 (``0 log 0 = 0``, as ``xlogy``) and keeps
  autograd through the formula finite.
- ``chunked(student, teacher, buffers, beta, teacher_grad)``: in place in preallocated
  ``[chunk, V]`` buffers (:mod:`torchkd.losses._fused_kernel`). On entry ``student`` and
  ``teacher`` hold the log-probabilities (clamped to the dtype's lowest value where logits may
  be ``-inf``, so that entries masked on both sides give ``0 log 0 = 0``); on return
  ``student`` holds the student gradient. Returns the rows and the buffer holding the teacher
  gradient (None unless ``teacher_grad``). ``buffers.get(name, rows)`` gives a work buffer.
- ``buckets(teacher_log, student_log, beta)``: the top-k form (:mod:`torchkd.losses.topk`) on
  ``[n, k + 1]`` bucket log-masses ``Q`` and ``P`` (the kept tokens, then the tail). For
  :math:`P_b = \sum_{j \in b} p_j` the chain rule gives
  :math:`\partial \mathcal{D} / \partial a_j = p_j c_{b(j)}` with
  :math:`c_b = g_b - \sum_{b'} P_{b'} g_{b'}`, :math:`g_b = \partial \mathcal{D} / \partial P_b`.
  Returns the rows, ``P_i c_i`` for the kept tokens ``[n, k]`` and ``c_tail`` ``[n]``. Buckets
  of zero mass on both sides (the empty tail of a top-k with k = V) add 0.
- the normalizer form, for the divergences whose student gradient is ``p_S - p_T`` (forward KL,
  soft cross-entropy): a row is ``sum_c p_T w_c`` plus log-normalizers, so the kl kernel's
  fastest path needs no log-probabilities. ``cross_logits(student, teacher, out)`` writes the
  unsoftened ``T w`` into the buffer ``out`` (the caller weights it in place and divides by ``T``);
  ``from_normalizers(cross, student_lse, teacher_lse)`` the rows from
  ``cross = sum p_T w`` and the log-sum-exps of ``a`` and ``b``.

A form an entry lacks is None; :func:`lookup` refuses it naming the argument.
"""

from __future__ import annotations

from typing import Literal, get_args

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
from torchkd.losses.divergence_mixtures import AKL, SkewForwardKL, SkewReverseKL

__all__ = ["DIVERGENCES", "NAMES", "Divergence", "lookup"]


class ForwardKL(Entry):
    r"""Forward KL :math:`\mathcal{D} = \sum p_T (\log p_T - \log p_S)` (Hinton et al., 2015).

    Gradients :math:`\partial_a = p_S - p_T`, :math:`\partial_b = p_T (\log p_T - \log p_S -
    \mathcal{D})`. Buckets: :math:`g = -Q/P`, :math:`c = \sum Q - Q/P`; the kept tokens' term is
    formed as :math:`P_i \sum Q - Q_i`, finite even where :math:`P_i` underflows. Normalizer
    form: :math:`\mathcal{D} = \sum p_T (b - a) - \mathrm{lse}(b) + \mathrm{lse}(a)`.
    """

    @staticmethod
    def cross_logits(student: Tensor, teacher: Tensor, out: Tensor) -> Tensor:
        return torch.sub(teacher.to(out.dtype), student, out=out)  # T (b - a)

    @staticmethod
    def from_normalizers(cross: Tensor, student_lse: Tensor, teacher_lse: Tensor) -> Tensor:
        return cross + (student_lse - teacher_lse)

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        beta: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        student, teacher = student_log.exp(), teacher_log.exp()
        log_ratio = teacher_log - student_log
        rows = weighted_row_sum(teacher, log_ratio, safe)
        teacher_gradient = None
        if teacher_grad:
            teacher_gradient = weighted(teacher, log_ratio - rows.unsqueeze(-1), safe)
        return rows, student - teacher if student_grad else None, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, beta: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        n = student.shape[0]
        work = torch.sub(teacher, student, out=buffers.get("work", n))  # log q - log p
        teacher.exp_()  # q
        teacher_gradient = None
        if teacher_grad:  # q (log q - log p - D)
            rows = row_dot(work, teacher, buffers.get("scratch", n))
            teacher_gradient = work.sub_(rows.unsqueeze(-1)).mul_(teacher)
        else:
            rows = work.mul_(teacher).sum(-1)
        student.exp_().sub_(teacher)  # p - q
        return rows, teacher_gradient

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, beta: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        teacher = teacher_log.exp()
        rows = weighted(teacher, teacher_log - student_log, safe=True).sum(-1)
        mass = teacher.sum(-1, keepdim=True)
        tail = mass[:, 0] - torch.exp(teacher_log[:, -1] - student_log[:, -1])
        return rows, student_log[:, :-1].exp() * mass - teacher[:, :-1], tail


class ReverseKL(Entry):
    r"""Reverse KL :math:`\mathcal{D} = \sum p_S (\log p_S - \log p_T)` (MiniLLM, Gu et al.).

    Gradients :math:`\partial_a = p_S (\log p_S - \log p_T - \mathcal{D})`,
    :math:`\partial_b = p_T - p_S`. Buckets: :math:`c = \log(P/Q) - \mathcal{D}`.
    """

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        beta: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        """Forward KL with the sides swapped: KL(p_S || p_T) and its two gradients."""
        rows, teacher_gradient, student_gradient = ForwardKL.dense(
            teacher_log,
            student_log,
            beta,
            safe=safe,
            student_grad=teacher_grad,
            teacher_grad=student_grad,
        )
        return rows, student_gradient, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, beta: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        work = torch.sub(student, teacher, out=buffers.get("work", student.shape[0]))
        student.exp_()  # p
        teacher_gradient = teacher.exp_().sub_(student) if teacher_grad else None  # q - p
        rows = work.mul_(student).sum(-1)
        student.mul_(rows.unsqueeze(-1))
        torch.sub(work, student, out=student)  # p (log p - log q - D)
        return rows, teacher_gradient

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, beta: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        ratio = student_log - teacher_log
        rows = weighted(student_log.exp(), ratio, safe=True).sum(-1)
        return rows, *kept_terms(student_log, ratio - rows.unsqueeze(-1))


class SoftCE(Entry):
    r"""Soft cross-entropy :math:`\mathcal{D} = H(p_T, p_S) = -\sum p_T \log p_S`.

    Gradients :math:`\partial_a = p_S - p_T`, :math:`\partial_b = -p_T (\log p_S + \mathcal{D})`.
    Normalizer form: :math:`\mathcal{D} = \mathrm{lse}(a) - \sum p_T a`. Not a divergence (its
    minimum is the teacher's entropy), so it has no chunked or bucket form: the fused loss
    distils with the proper divergences.
    """

    @staticmethod
    def cross_logits(student: Tensor, teacher: Tensor, out: Tensor) -> Tensor:
        return out.copy_(student)  # T a

    @staticmethod
    def from_normalizers(cross: Tensor, student_lse: Tensor, teacher_lse: Tensor) -> Tensor:
        return student_lse - cross

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        beta: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        student, teacher = student_log.exp(), teacher_log.exp()
        rows = -weighted_row_sum(teacher, student_log, safe)
        teacher_gradient = None
        if teacher_grad:
            teacher_gradient = -weighted(teacher, student_log + rows.unsqueeze(-1), safe)
        return rows, student - teacher if student_grad else None, teacher_gradient


class JSD(Entry):
    r"""Generalized Jensen-Shannon divergence JSD(β), ``beta`` strictly in (0, 1).

    With :math:`m = \beta p_T + (1 - \beta) p_S`, :math:`K_T = \mathrm{KL}(p_T \| m)`,
    :math:`K_S = \mathrm{KL}(p_S \| m)`: :math:`\mathcal{D} = \beta K_T + (1 - \beta) K_S`,
    :math:`\partial_a = (1 - \beta) p_S (\log(p_S/m) - K_S)`,
    :math:`\partial_b = \beta p_T (\log(p_T/m) - K_T)`. Buckets:
    :math:`c = (1 - \beta)(\log(P/m) - K_S)`.

    The log-ratios to ``m`` come from :func:`~torchkd.losses._common.jsd_log_ratios`, from
    :math:`\log p_T - \log p_S` alone: stable near ``beta`` = 0 and 1, where ``log m`` formed
    on its own loses every digit. Classes with :math:`p_T = p_S = 0` (``-inf - (-inf)``) are
    set to 0 before (in the dense form only with ``safe``).
    """

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        beta: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        student, teacher = student_log.exp(), teacher_log.exp()
        absent = (teacher == 0) & (student == 0) if safe else None
        teacher_ratio, student_ratio = mixture_ratios(teacher_log, student_log, beta, absent)
        teacher_part = weighted_row_sum(teacher, teacher_ratio, safe)
        student_part = weighted_row_sum(student, student_ratio, safe)
        rows = beta * teacher_part + (1.0 - beta) * student_part
        student_gradient = teacher_gradient = None
        if student_grad:
            student_gradient = (1.0 - beta) * weighted(
                student, student_ratio - student_part.unsqueeze(-1), safe
            )
        if teacher_grad:
            teacher_gradient = beta * weighted(
                teacher, teacher_ratio - teacher_part.unsqueeze(-1), safe
            )
        return rows, student_gradient, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, beta: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        n = student.shape[0]
        scratch = buffers.get("scratch", n)
        log_ratio = torch.sub(teacher, student, out=buffers.get("work", n))
        teacher_ratio, student_ratio = jsd_log_ratios(log_ratio, beta)
        student.exp_()  # p
        teacher.exp_()  # q
        student_part = row_dot(student, student_ratio, scratch)  # K_S = sum p log(p / m)
        student.mul_(student_ratio.sub_(student_part.unsqueeze(-1)))
        student.mul_(1.0 - beta)  # (1 - beta) p (log(p / m) - K_S)
        teacher_part = row_dot(teacher, teacher_ratio, scratch)
        teacher_gradient = None
        if teacher_grad:
            teacher.mul_(teacher_ratio.sub_(teacher_part.unsqueeze(-1))).mul_(beta)
            teacher_gradient = teacher
        return beta * teacher_part + (1.0 - beta) * student_part, teacher_gradient

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, beta: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        teacher, student = teacher_log.exp(), student_log.exp()
        absent = (teacher == 0) & (student == 0)  # the empty tail
        teacher_ratio, student_ratio = mixture_ratios(teacher_log, student_log, beta, absent)
        student_part = weighted(student, student_ratio, safe=True).sum(-1)
        teacher_part = weighted(teacher, teacher_ratio, safe=True).sum(-1)
        rows = beta * teacher_part + (1.0 - beta) * student_part
        coefficients = (1.0 - beta) * (student_ratio - student_part.unsqueeze(-1))
        return rows, *kept_terms(student_log, coefficients)


class TVD(Entry):
    r"""Total variation distance :math:`\mathcal{D} = \tfrac12 \sum |p_T - p_S|`, no :math:`T^2`.

    With :math:`g = \tfrac12 \mathrm{sign}(p_S - p_T)` (0 where they are equal, as autograd's
    derivative of ``abs``): :math:`\partial_a = p_S (g - \sum p_S g)`,
    :math:`\partial_b = p_T (\sum p_T g - g)`. Buckets: :math:`c = g - \sum P g`.
    """

    temperature_squared = False

    @staticmethod
    def dense(
        student_log: Tensor,
        teacher_log: Tensor,
        beta: float,
        *,
        safe: bool,
        student_grad: bool,
        teacher_grad: bool,
    ) -> DenseResult:
        student, teacher = student_log.exp(), teacher_log.exp()
        rows = 0.5 * (teacher - student).abs().sum(-1)
        signs = 0.5 * torch.sign(student - teacher)
        student_gradient = teacher_gradient = None
        if student_grad:
            student_gradient = student * (signs - (student * signs).sum(-1, keepdim=True))
        if teacher_grad:
            teacher_gradient = teacher * ((teacher * signs).sum(-1, keepdim=True) - signs)
        return rows, student_gradient, teacher_gradient

    @staticmethod
    def chunked(
        student: Tensor, teacher: Tensor, buffers: Buffers, beta: float, teacher_grad: bool
    ) -> tuple[Tensor, Tensor | None]:
        n = student.shape[0]
        work, scratch = buffers.get("work", n), buffers.get("scratch", n)
        student.exp_()
        teacher.exp_()
        torch.sub(student, teacher, out=work)
        rows = 0.5 * torch.abs(work, out=scratch).sum(-1)
        work.sign_().mul_(0.5)
        student_mean = row_dot(student, work, scratch).unsqueeze(-1)
        teacher_gradient = None
        if teacher_grad:
            teacher_mean = row_dot(teacher, work, scratch).unsqueeze(-1)
            teacher_gradient = teacher.mul_(torch.sub(teacher_mean, work, out=scratch))
        student.mul_(work.sub_(student_mean))
        return rows, teacher_gradient

    @staticmethod
    def buckets(
        teacher_log: Tensor, student_log: Tensor, beta: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        teacher, student = teacher_log.exp(), student_log.exp()
        rows = 0.5 * (teacher - student).abs().sum(-1)
        signs = 0.5 * torch.sign(student - teacher)
        coefficients = signs - (student * signs).sum(-1, keepdim=True)
        return rows, *kept_terms(student_log, coefficients)


Divergence = Literal[
    "forward_kl", "reverse_kl", "soft_ce", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "akl"
]
NAMES: tuple[str, ...] = get_args(Divergence)
ENTRIES = (ForwardKL, ReverseKL, SoftCE, JSD, TVD, SkewForwardKL, SkewReverseKL, AKL)
DIVERGENCES: dict[str, type[Entry]] = dict(zip(NAMES, ENTRIES, strict=True))


def names(form: str) -> tuple[str, ...]:
    """The divergences that have ``form`` (``"dense"``, ``"chunked"``, ``"buckets"``, ...)."""
    return tuple(name for name, entry in DIVERGENCES.items() if getattr(entry, form) is not None)


def lookup(name: str, form: str, argument: str = "divergence") -> type[Entry]:
    """The entry ``name`` if it has ``form``; else a ValueError naming ``argument``."""
    entry = DIVERGENCES.get(name) if isinstance(name, str) else None
    if entry is None or getattr(entry, form) is None:
        raise ValueError(f"{argument} must be one of {names(form)}, got {name!r}")
    return entry
