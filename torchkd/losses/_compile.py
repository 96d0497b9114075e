"""torch.compile for the KL family: the fused kernel, when it runs, and the fallback.

The fused kernel computes the same rows and gradients as the eager kernel
(:mod:`torchkd.losses._kl_eager`), written in elementwise primitives and compiled by
:func:`torch.compile` (dynamic shapes: new batch sizes do not recompile) into one kernel that
writes no ``[N, C]`` tensor but the gradients, which carry their temperature factor already.

The environment variable ``TORCHKD_COMPILE`` (:data:`COMPILE_ENV`, read per call) picks the
kernel: ``"auto"`` (default) compiles for inputs of at least
:data:`AUTO_COMPILE_MIN_ELEMENTS` (``2**19``) elements on platforms that support it (Dynamo,
plus a C++ compiler on CPU or Triton on CUDA), ``"1"`` always compiles, ``"0"`` never does;
float64 inputs always take the eager kernel. A failed compilation warns once and leaves the
eager kernel in charge for the rest of the process.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from torchkd.losses._common import compute_dtype
from torchkd.losses._kl_eager import KernelResult, gradient_scale, row_scale
from torchkd.losses.divergence_table import DIVERGENCES, Divergence

COMPILE_ENV = "TORCHKD_COMPILE"
AUTO_COMPILE_MIN_ELEMENTS = 2**19
_COMPILABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_compile_failed = False


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
    rows = rows * row_scale(kind, temperature.squeeze(-1))
    scale = gradient_scale(kind, temperature.squeeze(-1))
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


def _fused_skew_forward_kl(*args: object) -> KernelResult:
    return _fused("skew_forward_kl", *args)


def _fused_skew_reverse_kl(*args: object) -> KernelResult:
    return _fused("skew_reverse_kl", *args)


def _fused_akl(*args: object) -> KernelResult:
    return _fused("akl", *args)


_FUSED_ENTRY_POINTS: dict[str, Callable[..., KernelResult]] = {
    "forward_kl": _fused_forward_kl,
    "reverse_kl": _fused_reverse_kl,
    "soft_ce": _fused_soft_ce,
    "jsd": _fused_jsd,
    "tvd": _fused_tvd,
    "skew_forward_kl": _fused_skew_forward_kl,
    "skew_reverse_kl": _fused_skew_reverse_kl,
    "akl": _fused_akl,
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


def run_compiled(
    kind: Divergence,
    student: Tensor,
    teacher: Tensor,
    temperature: float | Tensor,
    beta: float,
    student_grad: bool,
    teacher_grad: bool,
) -> KernelResult | None:
    """Rows and gradients (with their factor) of the compiled kernel; None if it fails to build.

    ``temperature`` (a float or ``[N]``) is passed as an ``[N, 1]`` column in the compute dtype.
    A failure warns once and turns the compiled kernel off (:func:`should_compile`).
    """
    global _compile_failed
    rows_temperature = (
        torch.as_tensor(temperature, dtype=compute_dtype(student), device=student.device)
        .expand(student.shape[0])
        .reshape(-1, 1)
        .contiguous()
    )
    args = (student, teacher, rows_temperature, beta, student_grad, teacher_grad)
    try:
        return _compiled_kernel(kind)(*args)
    except Exception as error:  # compilation is optional: never let it crash a loss
        _compile_failed = True
        warnings.warn(
            f"torchkd: compiling the {kind} kernel failed ({type(error).__name__}: "
            f"{error}); using the eager kernel from now on",
            RuntimeWarning,
            stacklevel=6,
        )
        return None
