"""Numeric kernels for the KL family of logit losses, with closed-form gradients.

One kernel computes, per row of ``[N, C]`` logits, the divergence between the softened
distributions ``p_S = softmax(z_S / T)`` and ``p_T = softmax(z_T / T)`` scaled by ``T^2`` and,
in the same forward call, its closed-form gradient with respect to the logits. The gradient is
saved and the backward pass only multiplies it by the incoming row gradients, in place when
autograd will not run the graph again (no new ``[N, C]`` buffer). Divergences (``kind``): the
dense forms of :mod:`torchkd.losses.divergence_table`:

- ``"forward_kl"``: ``KL(p_T || p_S)``, student gradient ``T (p_S - p_T)``;
- ``"reverse_kl"``: ``KL(p_S || p_T)``;
- ``"soft_ce"``: the cross-entropy ``H(p_T, p_S)``;
- ``"jsd"``: the generalized Jensen-Shannon divergence with mixture weight ``beta`` in (0, 1);
- ``"tvd"``: the total variation distance, without the ``T^2`` factor (gradients ``/ T``);
- ``"skew_forward_kl"``, ``"skew_reverse_kl"``: DistiLLM's skew KLs with skew ``beta`` = λ in
  [0, 1);
- ``"akl"``: adaptive KL, forward and reverse KL weighted per row, head mass ``beta`` = μ.

Three execution paths, all computing in at least float32 and returning gradients in the inputs'
dtype:

- a fused kernel: the same math written in elementwise primitives and compiled by
  :func:`torch.compile` (dynamic shapes: new batch sizes do not recompile) into one kernel that
  writes no ``[N, C]`` tensor but the gradients (:mod:`torchkd.losses._compile`);
- the eager kernel: library softmax calls and in-place arithmetic in at most two fresh
  ``[N, C]`` buffers, the default for small inputs and the fallback wherever compilation is
  unavailable or fails (:mod:`torchkd.losses._kl_eager`);
- plain autograd through the formula, used when the temperature itself requires a gradient
  (learned temperatures, CTKD) or when an outer ``torch.compile`` is tracing the loss.

The environment variable ``TORCHKD_COMPILE`` picks the kernel: ``"auto"`` (default) compiles for
inputs of at least ``2**19`` elements on platforms that support it, ``"1"`` always compiles,
``"0"`` never does. A failed compilation warns once and falls back to the eager kernel.

Terms whose weight is a zero probability contribute 0 (as in ``xlogy``), so ``-inf`` logits at
the same positions in student and teacher (vocabulary masking) give finite losses and gradients,
on every path (a learned temperature's gradient included).

Precision: a divergence is a difference of log-normalizers, so in float32 a row whose value is
tiny next to ``log C`` loses its digits, which the ``T^2`` factor magnifies (at large
temperatures ``z / T`` differs by ~1e-4 between student and teacher and the float32 result can
even come out negative), and a row of logits near the float32 range can overflow to ``inf``
although the divergence itself is representable. Such rows
(:func:`torchkd.losses._common.unresolved_divergences`: at ordinary temperatures only
non-finite ones) are recomputed in float64 with their gradients, then returned in the compute
dtype. Every row is clamped at 0, the divergences' lower bound. Temperatures are bounded by
:data:`torchkd.losses._common.MAX_TEMPERATURE` (1e6), where float64 still resolves the
divergence. The recomputation is skipped while ``torch.compile`` traces the loss and on
devices without float64 (MPS).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from torchkd.losses import _compile
from torchkd.losses._common import compute_dtype, divide_finite, unresolved_divergences
from torchkd.losses._kl_eager import column, eager_kernel, gradient_scale, row_scale
from torchkd.losses.divergence_table import DIVERGENCES, Divergence, lookup

__all__: list[str] = []


def _graph_kept() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``)."""
    kept = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if kept is None else bool(kept())


def _apply_factor(gradient: Tensor | None, factor: Tensor, dtype: torch.dtype) -> Tensor | None:
    """``gradient * factor`` in ``dtype``; in place (no new ``[N, C]`` buffer) when allowed."""
    if gradient is None:
        return None
    gradient = gradient * factor if _graph_kept() else gradient.mul_(factor)
    return gradient.to(dtype)


def _run_kernel(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, float | Tensor | None]:
    """Pick the fused or the eager kernel; also return the scale the gradients still owe.

    Rows the kernel cannot resolve in its dtype are redone in float64 (:func:`_refine`).
    """
    with torch.no_grad():
        result = _fast_kernel(kind, student, teacher, temperature, beta, student_grad, teacher_grad)
        _refine(kind, student, teacher, temperature, beta, result)
        result[0].clamp_(min=0.0)
        return result


def _refine(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    result: tuple[Tensor, Tensor | None, Tensor | None, float | Tensor | None],
) -> None:
    """Recompute the imprecise rows of ``result`` in float64 and write them back in place."""
    rows, student_gradient, teacher_gradient, pending = result
    if rows.dtype == torch.float64 or rows.device.type == "mps" or rows.numel() == 0:
        return
    unscaled = rows / row_scale(kind, temperature)
    weight = 1.0 if DIVERGENCES[kind].temperature_squared else 0.0  # TVD: no T^2 rounding
    flagged = unresolved_divergences(unscaled, student.shape[-1], temperature, weight)
    index = flagged.nonzero().squeeze(1)
    if index.numel() == 0:
        return
    row_temperature = temperature
    if isinstance(temperature, Tensor):
        row_temperature = temperature.double()[index]
    exact = eager_kernel(
        kind,
        student[index].double(),
        teacher[index].double(),
        row_temperature,
        beta,
        student_gradient is not None,
        teacher_gradient is not None,
    )
    rows[index] = exact[0].to(rows.dtype)
    # The fused kernel's gradients carry their factor already; the eager one's still owe it.
    scale = gradient_scale(kind, row_temperature) if pending is None else 1.0
    for gradient, exact_gradient in ((student_gradient, exact[1]), (teacher_gradient, exact[2])):
        if gradient is not None:
            gradient[index] = (exact_gradient * scale).to(gradient.dtype)


def _fast_kernel(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None, float | Tensor | None]:
    """The fused kernel where it applies, else the eager one (see the module docstring)."""
    args = (kind, student, teacher, temperature, beta, student_grad, teacher_grad)
    if _compile.should_compile(student):
        result = _compile.run_compiled(*args)
        if result is not None:
            return (*result, None)
    rows, student_gradient, teacher_gradient = eager_kernel(*args)
    return rows, student_gradient, teacher_gradient, gradient_scale(kind, temperature)


class _DivergenceFunction(torch.autograd.Function):
    """Rows of ``T^2 D(p_T, p_S)`` whose backward reuses the gradient saved by the forward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student: Tensor,
        teacher: Tensor,
        temperature: float | Tensor,
        kind: Divergence,
        beta: float,
    ) -> Tensor:
        student_grad, teacher_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows, student_gradient, teacher_gradient, pending = _run_kernel(
            kind, student, teacher, temperature, beta, student_grad, teacher_grad
        )
        ctx.save_for_backward(student_gradient, teacher_gradient)
        ctx.pending_scale = pending
        ctx.dtypes = (student.dtype, teacher.dtype)
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, row_gradients: Tensor) -> tuple[Tensor | None, ...]:
        student_gradient, teacher_gradient = ctx.saved_tensors
        factor = row_gradients.unsqueeze(-1)
        if ctx.pending_scale is not None:
            factor = factor * ctx.pending_scale
        student_dtype, teacher_dtype = ctx.dtypes
        return (
            _apply_factor(student_gradient, factor, student_dtype),
            _apply_factor(teacher_gradient, factor, teacher_dtype),
            None,
            None,
            None,
        )


def _autograd_rows(
    kind: Divergence, student: Tensor, teacher: Tensor, temperature: float | Tensor, beta: float
) -> Tensor:
    """The same rows by plain autograd through the formula (differentiable in ``temperature``).

    ``-inf`` logits are kept out of the division by ``T`` (:func:`divide_finite`).
    """

    def log_probs(logits: Tensor) -> Tensor:
        values = logits.to(compute_dtype(logits))
        return torch.log_softmax(divide_finite(values, column(temperature)), dim=-1)

    rows = DIVERGENCES[kind].dense(
        log_probs(student),
        log_probs(teacher),
        beta,
        safe=True,
        student_grad=False,
        teacher_grad=False,
    )[0]
    return (rows * row_scale(kind, temperature)).clamp(min=0.0)


def divergence_rows(
    kind: Divergence,
    student_rows: Tensor,
    teacher_rows: Tensor,
    temperature: float | Tensor,
    *,
    beta: float = 0.5,
) -> Tensor:
    """``T^2 D(p_T, p_S)`` for each row of ``[N, C]`` logits, with the closed-form backward.

    Args:
        kind: a divergence of :data:`~torchkd.losses.divergence_table.NAMES` (``"tvd"``: no
            ``T^2``).
        student_rows: ``[N, C]`` student logits (already validated and row-selected).
        teacher_rows: ``[N, C]`` teacher logits, same shape.
        temperature: a positive float, or an ``[N]`` tensor of per-row temperatures. A tensor
            that requires grad takes the plain-autograd path so it receives its gradient.
        beta: the divergence's parameter: the JSD mixture weight, strictly between 0 and 1;
            the skew KLs' λ in [0, 1); AKL's head mass μ in [0, 1] (ignored by the others).

    Returns:
        ``[N]`` rows in float32 (float64 if either input is float64: a float32 student with a
        float64 teacher is computed in float64).
    """
    dtype = compute_dtype(student_rows, teacher_rows)
    if student_rows.dtype != teacher_rows.dtype:
        student_rows, teacher_rows = student_rows.to(dtype), teacher_rows.to(dtype)
    if isinstance(temperature, Tensor):
        temperature = temperature.to(student_rows.device, dtype)
        if temperature.dim() == 0 and not temperature.requires_grad:
            temperature = float(temperature)
    else:  # a Python int (or other real number) takes the float path
        temperature = float(temperature)
    lookup(kind, "dense", "kind")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"the jsd kernel needs 0 < beta < 1, got {beta} (use the KL kernels)")
    learned = isinstance(temperature, Tensor) and temperature.requires_grad
    if learned or torch.compiler.is_compiling():
        return _autograd_rows(kind, student_rows, teacher_rows, temperature, beta)
    if not (torch.is_grad_enabled() and (student_rows.requires_grad or teacher_rows.requires_grad)):
        return _run_kernel(kind, student_rows, teacher_rows, temperature, beta, False, False)[0]
    return _DivergenceFunction.apply(student_rows, teacher_rows, temperature, kind, beta)
