"""The eager kernels of the KL family, and the temperature factors every path shares.

For ``[N, C]`` logits, ``a = z_S / T`` and ``b = z_T / T``: the rows of a divergence of
:mod:`torchkd.losses.divergence_table` between ``p_S = softmax(a)`` and ``p_T = softmax(b)`` and the
closed-form gradients of the unscaled divergence with respect to ``a`` and ``b``, from library
softmax calls written in place into at most two fresh ``[N, C]`` buffers, in at least float32. The
rows carry the factor :func:`row_scale` (``T^2``; 1 for TVD); the gradients still owe the factor
:func:`gradient_scale` (``T``; ``1 / T`` for TVD) that makes them gradients with respect to the
logits, which :mod:`torchkd.losses.kl` applies. This kernel is the default for small inputs, the
fallback wherever compilation is unavailable or fails (:mod:`torchkd.losses._compile`), and the
float64 recomputation of the rows a faster kernel could not resolve.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchkd.losses._common import compute_dtype
from torchkd.losses._divergence_steps import softmax_in_place
from torchkd.losses.divergence_table import DIVERGENCES, Divergence

KernelResult = tuple[Tensor, Tensor | None, Tensor | None]


def column(temperature: float | Tensor) -> float | Tensor:
    """A per-row ``[N]`` temperature as an ``[N, 1]`` column (floats pass through)."""
    return temperature if isinstance(temperature, float) else temperature.unsqueeze(-1)


def _squared(temperature: float | Tensor) -> float | Tensor:
    return temperature**2 if isinstance(temperature, float) else temperature.square()


def row_scale(kind: Divergence, temperature: float | Tensor) -> float | Tensor:
    """The factor of the rows: ``T^2``, or 1 for a divergence without it (TVD)."""
    return _squared(temperature) if DIVERGENCES[kind].temperature_squared else 1.0


def gradient_scale(kind: Divergence, temperature: float | Tensor) -> float | Tensor:
    """The factor of the gradients w.r.t. the logits: the rows' factor over ``T`` (a per-row
    temperature as an ``[N, 1]`` column)."""
    per_row = column(temperature)
    return per_row if DIVERGENCES[kind].temperature_squared else 1.0 / per_row


def _softened(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``logits / T`` in the compute dtype, in a fresh buffer that the caller may overwrite."""
    values = logits.to(compute_dtype(logits))
    if isinstance(temperature, float) and temperature == 1.0:
        return values.clone() if values is logits else values
    return values / column(temperature)


def _eager_probability_form(
    kind: Divergence, student: Tensor, teacher: Tensor, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Rows (x 1) of a divergence with a normalizer form, and the student gradient ``p_S - p_T``.

    With ``a = z_S / T``, ``b = z_T / T``: the entry's normalizer form of
    :mod:`torchkd.losses.divergence_table` (forward KL ``sum p_T (b - a) - lse(b) + lse(a)``,
    soft cross-entropy ``lse(a) - sum p_T a``). Two ``[N, C]`` buffers in all: the teacher's
    probabilities, and one that holds the weighted logits of the dot product, then the
    student's probabilities, then the gradient. The result is non-finite where a zero
    probability meets an infinite logit; callers then use the log form.
    """
    entry = DIVERGENCES[kind]
    teacher_probs = _softened(teacher, temperature)
    teacher_lse = softmax_in_place(teacher_probs)
    dtype = teacher_probs.dtype
    work = entry.cross_logits(student, teacher, torch.empty_like(teacher_probs))
    cross = work.mul_(teacher_probs).sum(-1) / temperature
    if isinstance(temperature, float) and temperature == 1.0:
        work.copy_(student)
    elif student.dtype == dtype:
        torch.div(student, column(temperature), out=work)
    else:
        work.copy_(student).div_(column(temperature))
    student_lse = softmax_in_place(work)
    rows = entry.from_normalizers(cross, student_lse, teacher_lse)
    return rows, work.sub_(teacher_probs)


def _eager_log_form(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
    safe: bool,
) -> KernelResult:
    """Any divergence from two in-place log-softmaxes and its dense form."""

    def log_probs(logits: Tensor) -> Tensor:
        values = _softened(logits, temperature)
        return torch.log_softmax(values, dim=-1, out=values)

    return DIVERGENCES[kind].dense(
        log_probs(student),
        log_probs(teacher),
        beta,
        safe=safe,
        student_grad=student_grad,
        teacher_grad=teacher_grad,
    )


def eager_kernel(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> KernelResult:
    """Loss rows (x T^2, TVD x 1) and *unscaled* gradients (they owe :func:`gradient_scale`).

    Library softmax calls written into fresh buffers in place (each new ``[N, C]`` buffer costs
    page faults that dwarf the arithmetic on CPU). The fast forms have no NaN guards; if a row
    comes out non-finite (``-inf`` or NaN logits), all rows are redone with the guarded form.
    """
    factor = row_scale(kind, temperature)
    if DIVERGENCES[kind].cross_logits is not None and not teacher_grad:
        rows, student_gradient = _eager_probability_form(kind, student, teacher, temperature)
        if bool(torch.isfinite(rows).all()):
            return rows * factor, student_gradient if student_grad else None, None
    else:
        args = (kind, student, teacher, temperature, beta, student_grad, teacher_grad)
        rows, student_gradient, teacher_gradient = _eager_log_form(*args, safe=False)
        if bool(torch.isfinite(rows).all()):
            return rows * factor, student_gradient, teacher_gradient
    args = (kind, student, teacher, temperature, beta, student_grad, teacher_grad)
    rows, student_gradient, teacher_gradient = _eager_log_form(*args, safe=True)
    return rows * factor, student_gradient, teacher_gradient
