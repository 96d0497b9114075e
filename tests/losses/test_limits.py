"""Well-posed inputs that gave NaN values or gradients (issue 22, section 4): each test checks
the value and the gradients against a float64 reference of the defined limit. The fuzz suite
(``test_fuzz.py``, ``_edge_cases``) runs the same kinds of input for every registered loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

import torchkd.losses as L
from torchkd.losses import _compile, entry
from torchkd.losses.logit import standardize_logits

from .references import dkd_row, kl_from_probs, softmax, standardize
from .test_fuzz import DTYPES, build_call

NEG_INF = float("-inf")
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * 2.0).to(dtype)


def float32_tolerance(reference: Tensor, terms: int) -> float:
    """A float32 computation of ``terms`` rounded terms, each of size at most ``max |ref|``."""
    return 8 * terms * EPS32 * float(reference.abs().max())


# --------------------------------------------------------------------------- standardization


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_standardized_constant_student_rows_have_the_uniform_limit(temperature: float) -> None:
    """sigma = 0: the row standardizes to 0 (uniform) and the derivative is (I - 11^T/C) / eps.

    Reference: ``T^2 KL(p_T || u)`` with ``p_T`` from the float64 z-score of the teacher; with
    ``z~_S = 0`` the student gradient is ``(T (u - p_T) - mean) / (eps N)`` and ``u - p_T``
    sums to 0, so it is ``T (u - p_T) / (eps N)``.
    """
    rows, classes, eps = 3, 6, 1e-7
    student = torch.full((rows, classes), 1.5, requires_grad=True)
    teacher = randn(rows, classes, seed=1).requires_grad_()
    loss = L.kd_loss(student, teacher, temperature=temperature, standardize=True)
    student_gradient, teacher_gradient = torch.autograd.grad(loss, (student, teacher))
    uniform = [1.0 / classes] * classes
    expected_value, expected_gradient = 0.0, []
    for row in teacher.detach().double().numpy():
        teacher_probs = softmax(np.array(standardize(row, eps)), temperature)
        expected_value += temperature**2 * kl_from_probs(teacher_probs, uniform) / rows
        expected_gradient.append(
            [
                temperature * (u - q) / (eps * rows)
                for u, q in zip(uniform, teacher_probs, strict=True)
            ]
        )
    expected = torch.tensor(expected_gradient, dtype=torch.float64)
    assert math.isclose(loss.item(), expected_value, rel_tol=8 * classes * EPS32)
    tolerance = float32_tolerance(expected, classes)
    torch.testing.assert_close(student_gradient.double(), expected, rtol=0, atol=tolerance)
    assert torch.isfinite(teacher_gradient).all()


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("layout", ["zero rows", "one unmasked class"])
def test_constant_rows_on_both_sides_give_zero_with_zero_gradient(
    dtype: torch.dtype, layout: str
) -> None:
    """Both sides constant (all zero, or one class left by ``-inf`` masking): both standardize to
    the same uniform distribution, so every standardized loss is 0 and, since ``p_S = p_T``,
    so is its gradient."""
    student = torch.zeros(4, 5, dtype=dtype)
    if layout == "one unmasked class":
        student[:, 1:] = NEG_INF
        student[:, 0] = 3.0
    teacher = student.clone().requires_grad_()
    student.requires_grad_()
    labels = torch.zeros(4, dtype=torch.long)
    for loss in (
        L.ls_kd_loss(student, teacher),
        L.kd_loss(student, teacher, standardize=True),
        L.hinton_loss(student, teacher, labels, standardize=True, alpha=1.0),
    ):
        gradients = torch.autograd.grad(loss, (student, teacher))
        assert loss.item() == 0.0
        for gradient in gradients:
            assert torch.equal(gradient, torch.zeros_like(gradient))


def test_standardize_logits_of_a_constant_row_is_zero_with_the_limit_derivative() -> None:
    """The derivative of a standardized constant row is ``(I - 11^T / C) / eps`` exactly."""
    classes, eps = 4, 1e-7
    row = torch.full((1, classes), -2.0, dtype=torch.float64, requires_grad=True)
    standardized = standardize_logits(row, eps)
    assert torch.equal(standardized.detach(), torch.zeros_like(standardized))
    jacobian = torch.autograd.functional.jacobian(lambda z: standardize_logits(z, eps), row)
    expected = (torch.eye(classes, dtype=torch.float64) - 1.0 / classes) / eps
    torch.testing.assert_close(jacobian.reshape(classes, classes), expected, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- DKD


def test_dkd_rows_without_non_target_mass_contribute_zero() -> None:
    """Rows whose every class but the target is ``-inf`` on both sides have ``p_y = 1`` on both:
    TCKD is 0 and NCKD (undefined teacher distribution, weight ``1 - p_y = 0``) is 0. The other
    rows match the float64 reference; the masked rows' gradients are exactly 0."""
    student, teacher = randn(4, 5, seed=2), randn(4, 5, seed=3)
    labels = torch.tensor([0, 1, 2, 3])
    for side in (student, teacher):
        side[:2] = NEG_INF
        side[0, 0], side[1, 1] = 1.0, -2.0  # rows 0 and 1: the target is the only class left
    student.requires_grad_()
    teacher.requires_grad_()
    loss = L.dkd_loss(student, teacher, labels)
    student_gradient, teacher_gradient = torch.autograd.grad(loss, (student, teacher))
    expected = (
        sum(
            dkd_row(s, t, int(y))
            for s, t, y in zip(
                student[2:].detach().double().numpy(),
                teacher[2:].detach().numpy(),
                labels[2:],
                strict=True,
            )
        )
        / 4
    )
    assert math.isclose(loss.item(), expected, rel_tol=8 * 5 * EPS32)
    for gradient in (student_gradient, teacher_gradient):
        assert torch.isfinite(gradient).all()
        assert torch.equal(gradient[:2], torch.zeros_like(gradient[:2]))
    wide = [t.detach()[2:].double().requires_grad_() for t in (student, teacher)]
    reference = torch.autograd.grad(L.dkd_loss(*wide, labels[2:]) / 2, wide)
    for gradient, expected_gradient in zip(
        (student_gradient, teacher_gradient), reference, strict=True
    ):
        tolerance = float32_tolerance(expected_gradient, 5)
        torch.testing.assert_close(gradient[2:].double(), expected_gradient, rtol=0, atol=tolerance)


# --------------------------------------------------------------------------- TVD, temperatures


def test_tvd_with_a_learned_temperature_and_shared_masking_equals_the_unmasked_classes() -> None:
    """Shared ``-inf`` classes have probability 0 on both sides: the loss, its gradients and the
    temperature's gradient equal those of the loss over the other classes (float64 formula)."""
    student, teacher = randn(3, 6, seed=4), randn(3, 6, seed=5)
    student[:, -2:] = teacher[:, -2:] = NEG_INF
    student.requires_grad_()
    teacher.requires_grad_()
    temperature = torch.tensor(2.0, requires_grad=True)
    loss = L.tvd_loss(student, teacher, temperature=temperature)
    gradients = torch.autograd.grad(loss, (student, teacher, temperature))

    kept = [t.detach()[:, :-2].double().requires_grad_() for t in (student, teacher)]
    wide_temperature = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    probs = [torch.softmax(side / wide_temperature, dim=-1) for side in kept]
    expected_loss = 0.5 * (probs[0] - probs[1]).abs().sum(-1).mean()
    expected = torch.autograd.grad(expected_loss, (*kept, wide_temperature))

    assert math.isclose(loss.item(), expected_loss.item(), rel_tol=8 * 6 * EPS32)
    torch.testing.assert_close(gradients[2].double(), expected[2], rtol=8 * 6 * EPS32, atol=0)
    for gradient, expected_gradient in zip(gradients[:2], expected[:2], strict=True):
        assert torch.equal(gradient[:, -2:], torch.zeros_like(gradient[:, -2:]))
        tolerance = float32_tolerance(expected_gradient, 6)
        torch.testing.assert_close(
            gradient[:, :-2].double(), expected_gradient, rtol=0, atol=tolerance
        )


def test_multi_teacher_takes_a_python_int_temperature() -> None:
    """``temperature=4`` (an int, as YAML gives it) is the same loss as ``temperature=4.0``."""
    student = randn(3, 5, seed=6).requires_grad_()
    teachers = [randn(3, 5, seed=7), randn(3, 5, seed=8)]
    labels = torch.tensor([0, 1, 2])
    values = [
        L.multi_teacher_kd_loss(student, teachers, labels, temperature=temperature)
        for temperature in (4, 4.0)
    ]
    gradients = [torch.autograd.grad(value, student)[0] for value in values]
    assert torch.equal(values[0], values[1])
    assert torch.equal(gradients[0], gradients[1])


# --------------------------------------------------------------------------- half modules


STATEFUL = [name for name in L.available() if entry(name).functional is None]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("name", STATEFUL)
def test_a_half_module_computes_and_returns_float32(name: str, dtype: torch.dtype) -> None:
    """A loss module cast with ``.half()`` (parameters and buffers in half) on half inputs
    computes in float32 (the upcast helper) and returns float32, the losses' documented
    convention (``torchkd.losses._common``), finite."""
    half = build_call(name, dtype=dtype, module_dtype=dtype)()
    assert half.dtype == torch.float32
    assert torch.isfinite(half).all()
