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
- ``"tvd"``: the total variation distance, without the ``T^2`` factor (gradients ``/ T``).

Three execution paths, all computing in at least float32 and returning gradients in the inputs'
dtype:

- a fused kernel: the same math written in elementwise primitives and compiled by
  :func:`torch.compile` (dynamic shapes: new batch sizes do not recompile) into one kernel that
  writes no ``[N, C]`` tensor but the gradients;
- the eager kernel: library softmax calls and in-place arithmetic in at most two fresh
  ``[N, C]`` buffers, the default for small inputs and the fallback wherever compilation is
  unavailable or fails;
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

import functools
import os
import shutil
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from torchkd.losses._common import compute_dtype, divide_finite, unresolved_divergences
from torchkd.losses.divergence_table import DIVERGENCES, Divergence, lookup

__all__: list[str] = []

KernelResult = tuple[Tensor, Tensor | None, Tensor | None]

COMPILE_ENV = "TORCHKD_COMPILE"
AUTO_COMPILE_MIN_ELEMENTS = 2**19
_COMPILABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_compile_failed = False


# --------------------------------------------------------------------------- the math


def _row_scale(kind: Divergence, temperature: float | Tensor) -> float | Tensor:
    """The factor of the rows: ``T^2``, or 1 for a divergence without it (TVD)."""
    return _squared(temperature) if DIVERGENCES[kind].temperature_squared else 1.0


def _gradient_scale(kind: Divergence, temperature: float | Tensor) -> float | Tensor:
    """The factor of the gradients w.r.t. the logits: the rows' factor over ``T`` (a per-row
    temperature as an ``[N, 1]`` column)."""
    column = _column(temperature)
    return column if DIVERGENCES[kind].temperature_squared else 1.0 / column


# --------------------------------------------------------------------------- fused kernel


def _fused(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> KernelResult:
    """Loss rows (x T^2) and logit gradients (x T; TVD: x 1 and / T), for :func:`torch.compile`.

    ``temperature`` is ``[N, 1]``. The log-softmax is spelled out (max, shift, log-sum-exp)
    rather than called, so the compiler fuses everything into row reductions that recompute
    the elementwise terms instead of storing them: for forward KL the generated kernel writes
    no ``[N, C]`` buffer but the gradient (JSD keeps one more).
    """

    def log_probs(logits: Tensor) -> Tensor:
        values = logits.to(compute_dtype(logits))
        shifted = (values - values.amax(-1, keepdim=True)) * temperature.reciprocal()
        return shifted - shifted.exp().sum(-1, keepdim=True).log()

    rows, student_gradient, teacher_gradient = DIVERGENCES[kind].dense(
        log_probs(student),
        log_probs(teacher),
        beta,
        safe=True,
        student_grad=student_grad,
        teacher_grad=teacher_grad,
    )
    rows = rows * _row_scale(kind, temperature.squeeze(-1))
    scale = _gradient_scale(kind, temperature.squeeze(-1))
    if student_gradient is not None:
        student_gradient = (student_gradient * scale).to(student.dtype)
    if teacher_gradient is not None:
        teacher_gradient = (teacher_gradient * scale).to(teacher.dtype)
    return rows, student_gradient, teacher_gradient


# One entry point per divergence of the table: torch.compile caches compiled graphs per code
# object, so separate functions keep each divergence's dtype/gradient variants in a cache of
# their own.
def _fused_forward_kl(*args: object) -> KernelResult:
    return _fused("forward_kl", *args)


def _fused_reverse_kl(*args: object) -> KernelResult:
    return _fused("reverse_kl", *args)


def _fused_soft_ce(*args: object) -> KernelResult:
    return _fused("soft_ce", *args)


def _fused_jsd(*args: object) -> KernelResult:
    return _fused("jsd", *args)


def _fused_tvd(*args: object) -> KernelResult:
    return _fused("tvd", *args)


_FUSED_ENTRY_POINTS: dict[str, Callable[..., KernelResult]] = {
    "forward_kl": _fused_forward_kl,
    "reverse_kl": _fused_reverse_kl,
    "soft_ce": _fused_soft_ce,
    "jsd": _fused_jsd,
    "tvd": _fused_tvd,
}
_compiled_kernels: dict[str, Callable[..., KernelResult]] = {}


def _compiled_kernel(kind: Divergence) -> Callable[..., KernelResult]:
    if kind not in _compiled_kernels:
        _compiled_kernels[kind] = torch.compile(
            _FUSED_ENTRY_POINTS[kind], dynamic=True, fullgraph=True
        )
    return _compiled_kernels[kind]


@functools.cache
def _platform_can_compile(device_type: str) -> bool:
    """Whether ``torch.compile`` can build kernels here (Dynamo, plus a C++ compiler or Triton)."""
    try:
        if not torch._dynamo.is_dynamo_supported():
            return False
        if device_type == "cuda":
            from torch.utils._triton import has_triton

            return has_triton()
    except Exception:  # a private helper moved: assume no
        return False
    if device_type != "cpu":
        return False
    compilers = (os.environ.get("CXX"), "g++", "c++", "clang++")
    return any(name and shutil.which(name) for name in compilers)


def compile_policy() -> str:
    """The value of ``TORCHKD_COMPILE``: ``"auto"`` (default), ``"1"`` or ``"0"``."""
    policy = os.environ.get(COMPILE_ENV, "auto").strip().lower() or "auto"
    if policy not in ("auto", "1", "0"):
        raise ValueError(f"{COMPILE_ENV} must be 'auto', '1' or '0', got {policy!r}")
    return policy


def should_compile(logits: Tensor) -> bool:
    """Whether the fused compiled kernel handles ``logits`` under the current policy."""
    policy = compile_policy()
    if policy == "0" or _compile_failed or logits.numel() == 0:
        return False
    if logits.dtype not in _COMPILABLE_DTYPES:
        return False
    if policy == "1":
        return True
    return logits.numel() >= AUTO_COMPILE_MIN_ELEMENTS and _platform_can_compile(logits.device.type)


# --------------------------------------------------------------------------- eager kernel


def _softened(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``logits / T`` in the compute dtype, in a fresh buffer that the caller may overwrite."""
    values = logits.to(compute_dtype(logits))
    if isinstance(temperature, float) and temperature == 1.0:
        return values.clone() if values is logits else values
    return values / _column(temperature)


def _column(temperature: float | Tensor) -> float | Tensor:
    """A per-row ``[N]`` temperature as an ``[N, 1]`` column (floats pass through)."""
    return temperature if isinstance(temperature, float) else temperature.unsqueeze(-1)


def _squared(temperature: float | Tensor) -> float | Tensor:
    return temperature**2 if isinstance(temperature, float) else temperature.square()


def _softmax_in_place(values: Tensor) -> Tensor:
    """Overwrite ``values`` with ``softmax(values)``; return the rows' log-sum-exp.

    The log-sum-exp comes from the softmax itself: the largest probability is
    ``exp(max - lse)``, so ``lse = max - log(max p)``, with ``max p >= 1 / C`` (no underflow).
    """
    maximum = values.amax(-1)
    torch.softmax(values, dim=-1, out=values)  # row by row, so aliasing the input is safe
    return maximum - values.amax(-1).log()


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
    teacher_lse = _softmax_in_place(teacher_probs)
    dtype = teacher_probs.dtype
    work = entry.cross_logits(student, teacher, dtype)
    cross = work.mul_(teacher_probs).sum(-1) / temperature
    if isinstance(temperature, float) and temperature == 1.0:
        work.copy_(student)
    elif student.dtype == dtype:
        torch.div(student, _column(temperature), out=work)
    else:
        work.copy_(student).div_(_column(temperature))
    student_lse = _softmax_in_place(work)
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


def _eager(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> KernelResult:
    """Loss rows (x T^2, TVD x 1) and *unscaled* gradients (they owe :func:`_gradient_scale`).

    Library softmax calls written into fresh buffers in place (each new ``[N, C]`` buffer costs
    page faults that dwarf the arithmetic on CPU). The fast forms have no NaN guards; if a row
    comes out non-finite (``-inf`` or NaN logits), all rows are redone with the guarded form.
    """
    row_scale = _row_scale(kind, temperature)
    if DIVERGENCES[kind].cross_logits is not None and not teacher_grad:
        rows, student_gradient = _eager_probability_form(kind, student, teacher, temperature)
        if bool(torch.isfinite(rows).all()):
            return rows * row_scale, student_gradient if student_grad else None, None
    else:
        args = (kind, student, teacher, temperature, beta, student_grad, teacher_grad)
        rows, student_gradient, teacher_gradient = _eager_log_form(*args, safe=False)
        if bool(torch.isfinite(rows).all()):
            return rows * row_scale, student_gradient, teacher_gradient
    args = (kind, student, teacher, temperature, beta, student_grad, teacher_grad)
    rows, student_gradient, teacher_gradient = _eager_log_form(*args, safe=True)
    return rows * row_scale, student_gradient, teacher_gradient


# --------------------------------------------------------------------------- autograd glue


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
    unscaled = rows / _row_scale(kind, temperature)
    weight = 1.0 if DIVERGENCES[kind].temperature_squared else 0.0  # TVD: no T^2 rounding
    flagged = unresolved_divergences(unscaled, student.shape[-1], temperature, weight)
    index = flagged.nonzero().squeeze(1)
    if index.numel() == 0:
        return
    row_temperature = temperature
    if isinstance(temperature, Tensor):
        row_temperature = temperature.double()[index]
    exact = _eager(
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
    scale = _gradient_scale(kind, row_temperature) if pending is None else 1.0
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
    global _compile_failed
    if should_compile(student):
        rows_temperature = (
            torch.as_tensor(temperature, dtype=compute_dtype(student), device=student.device)
            .expand(student.shape[0])
            .reshape(-1, 1)
            .contiguous()
        )
        args = (student, teacher, rows_temperature, beta, student_grad, teacher_grad)
        try:
            return (*_compiled_kernel(kind)(*args), None)
        except Exception as error:  # compilation is optional: never let it crash a loss
            _compile_failed = True
            warnings.warn(
                f"torchkd: compiling the {kind} kernel failed ({type(error).__name__}: "
                f"{error}); using the eager kernel from now on",
                RuntimeWarning,
                stacklevel=5,
            )
    rows, student_gradient, teacher_gradient = _eager(
        kind, student, teacher, temperature, beta, student_grad, teacher_grad
    )
    return rows, student_gradient, teacher_gradient, _gradient_scale(kind, temperature)


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
        return torch.log_softmax(divide_finite(values, _column(temperature)), dim=-1)

    rows = DIVERGENCES[kind].dense(
        log_probs(student),
        log_probs(teacher),
        beta,
        safe=True,
        student_grad=False,
        teacher_grad=False,
    )[0]
    return (rows * _row_scale(kind, temperature)).clamp(min=0.0)


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
        beta: the JSD mixture weight, strictly between 0 and 1 (ignored by the others).

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
