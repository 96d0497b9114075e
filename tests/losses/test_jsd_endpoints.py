"""JSD(β) near its endpoints (issue 22, §4b): β = 1e-8 ... 1 - 1e-6 at T = 1 and 20.

Forming ``log p - log m`` from two separately rounded logs cancels when ``m ≈ p`` (β → 0) or
``m ≈ q`` (β → 1): at β = 1e-6, T = 1 the loss was 1e-2 off relative to its value. The tests
compare the dense loss and the fused loss (one chunk, many chunks, top-k buckets with k = V)
with a float64 reference on values and gradients, within a float32 bound that scales with the
divergence's own terms (:func:`jsd_bounds`), not with the log-probabilities.
"""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import FLOAT32_EPS
from torch import Tensor

from torchkd.losses import _compile
from torchkd.losses.divergences import jsd_loss
from torchkd.losses.fused_linear import fused_linear_kd_loss
from torchkd.losses.topk import TopKLogits

BETAS = (1e-8, 1e-6, 1e-4, 0.5, 1 - 1e-6)
TEMPERATURES = (1.0, 20.0)
ROWS, VOCAB = 6, 40


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")


def logits(seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 3.0 * torch.randn(ROWS, VOCAB, generator=generator)


def reference(student_log: Tensor, teacher_log: Tensor, beta: float) -> Tensor:
    """Float64 rows ``β KL(q‖m) + (1-β) KL(p‖m)`` from the log-probabilities."""
    log_m = torch.logaddexp(teacher_log + math.log(beta), student_log + math.log1p(-beta))
    teacher_part = (teacher_log.exp() * (teacher_log - log_m)).sum(-1)
    student_part = (student_log.exp() * (student_log - log_m)).sum(-1)
    return beta * teacher_part + (1 - beta) * student_part


def jsd_bounds(
    softened: Tensor, student_log: Tensor, teacher_log: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """Float32 error bounds of each row and of each student-gradient entry (w.r.t. ``a = z/T``).

    Each float32 ``log p_c`` is off by ``δ ≤ ε (A + 2L + V + 1)`` (``A = max|a|``,
    ``L = 2A + log V``; the count of :func:`tests.tolerances.divergence_tolerance`). The row's
    derivatives in the log-probabilities are exactly ``(1-β) p_c ρ_S,c`` and ``β q_c ρ_T,c``
    (``ρ = log(·/m)``), so those errors move the row by at most ``δ R``,
    ``R = Σ_c |(1-β) p_c ρ_S,c| + |β q_c ρ_T,c|``; the ratios' own roundings (a few ``ε``
    each) and the sum over ``V`` add ``ε (V + 6) R``. ``ρ_S`` depends on ``d = log q - log p``
    through ``∂ρ_S/∂d = -β q/m``, so the gradient ``(1-β) p (ρ_S - K_S)`` is off by at most
    ``(1-β) p (2 δ β q/m + 3 ε |ρ_S| + δK_S) + 3 ε |g|`` with ``δK_S`` the row bound of
    ``K_S``. Both are ``O(min(β, 1-β))`` with the divergence, where the absolute budget of the
    log-probabilities (``ε L``) is not.
    """
    vocab = softened.shape[-1]
    logit_bound = float(softened.abs().max())
    delta = FLOAT32_EPS * (logit_bound + 2 * (2 * logit_bound + math.log(vocab)) + vocab + 1)
    rounding = delta + FLOAT32_EPS * (vocab + 6)
    p, q = student_log.exp(), teacher_log.exp()
    log_m = torch.logaddexp(teacher_log + math.log(beta), student_log + math.log1p(-beta))
    student_ratio, teacher_ratio = student_log - log_m, teacher_log - log_m
    student_terms = (p * student_ratio).abs().sum(-1, keepdim=True)
    teacher_terms = (q * teacher_ratio).abs().sum(-1, keepdim=True)
    row = ((1 - beta) * student_terms + beta * teacher_terms) * rounding
    student_part = (p * student_ratio).sum(-1, keepdim=True)
    gradient = (1 - beta) * p * (student_ratio - student_part)
    gradient_bound = (1 - beta) * p * (
        2 * delta * beta * q / log_m.exp()
        + 3 * FLOAT32_EPS * student_ratio.abs()
        + student_terms * rounding
    ) + 3 * FLOAT32_EPS * gradient.abs()
    return row.squeeze(-1), gradient_bound


def expected(
    student: Tensor, teacher_log: Tensor, beta: float, temperature: float
) -> tuple[Tensor, Tensor, float, Tensor]:
    """Reference loss (batchmean, × T²), its student gradient and both tolerances."""
    student64 = student.double().requires_grad_()
    softened = student64 / temperature
    student_log = softened.log_softmax(-1)
    rows = reference(student_log, teacher_log, beta)
    loss = temperature**2 * rows.mean()
    (gradient,) = torch.autograd.grad(loss, student64)
    with torch.no_grad():
        row_bound, entry_bound = jsd_bounds(softened, student_log, teacher_log, beta)
        scale = temperature**2 / ROWS
        loss_tolerance = temperature**2 * (
            float(row_bound.max()) + ROWS * FLOAT32_EPS * float(rows.abs().mean())
        )
        gradient_tolerance = scale / temperature * entry_bound
    return loss.detach(), gradient, loss_tolerance, gradient_tolerance


def assert_close(
    loss: Tensor, gradient: Tensor, student: Tensor, teacher_log: Tensor, beta: float, t: float
) -> None:
    """The float32 loss and student gradient within :func:`jsd_bounds` of the reference."""
    value, exact_gradient, loss_tolerance, gradient_tolerance = expected(
        student, teacher_log, beta, t
    )
    error = abs(loss.double().item() - value.item())
    assert error <= loss_tolerance, (beta, t, error, loss_tolerance, value.item())
    excess = (gradient.double() - exact_gradient).abs() - gradient_tolerance
    assert float(excess.max()) <= 0, (beta, t, float(excess.max()))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_dense_jsd_near_endpoints(beta: float, temperature: float) -> None:
    student, teacher = logits(0).requires_grad_(), logits(1)
    loss = jsd_loss(student, teacher, beta=beta, temperature=temperature)
    loss.backward()
    teacher_log = (teacher.double() / temperature).log_softmax(-1)
    assert_close(loss, student.grad, student.detach(), teacher_log, beta, temperature)


@pytest.mark.parametrize("chunk_size", [ROWS, 2])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_fused_jsd_near_endpoints(beta: float, temperature: float, chunk_size: int) -> None:
    # identity projections: the hidden states are the logits, their gradient the logits' one
    student, teacher = logits(0).requires_grad_(), logits(1)
    identity = torch.eye(VOCAB)
    loss = fused_linear_kd_loss(
        student,
        identity,
        teacher,
        identity,
        divergence="jsd",
        beta=beta,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    loss.backward()
    teacher_log = (teacher.double() / temperature).log_softmax(-1)
    assert_close(loss, student.grad, student.detach(), teacher_log, beta, temperature)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_fused_topk_jsd_near_endpoints(beta: float, temperature: float) -> None:
    # k = V: every token is its own bucket, the tail is empty
    student, teacher = logits(0).requires_grad_(), logits(1)
    sparse = TopKLogits.from_logits(teacher, k=VOCAB, temperature=temperature)
    loss = fused_linear_kd_loss(
        student,
        torch.eye(VOCAB),
        teacher_logits=sparse,
        divergence="jsd",
        beta=beta,
        temperature=temperature,
    )
    loss.backward()
    teacher_log = torch.empty(ROWS, VOCAB, dtype=torch.float64)
    teacher_log.scatter_(1, sparse.token_ids, sparse.log_probs.double())
    assert_close(loss, student.grad, student.detach(), teacher_log, beta, temperature)
