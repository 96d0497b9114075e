"""Tests for torchkd.temperature: the gradient reversal layer and the CTKD learnable
temperature."""

from __future__ import annotations

import math

import pytest
import torch
from tolerances import float32_tolerance

from torchkd.schedules import Cosine, Linear
from torchkd.temperature import LearnableTemperature, reverse_gradient

# ------------------------------------------------------------------------ gradient reversal


@pytest.mark.parametrize("strength", [0.0, 0.37, 1.0, 5.0])
def test_reverse_gradient_flips_and_scales_exactly(strength: float) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(6, dtype=torch.float64, generator=generator, requires_grad=True)
    weights = torch.randn(6, dtype=torch.float64, generator=generator)

    def head(values: torch.Tensor) -> torch.Tensor:
        return (values.sin() * weights).sum()

    plain = inputs.pow(2)
    (plain_grad,) = torch.autograd.grad(head(plain), inputs)
    reversed_values = reverse_gradient(inputs.pow(2), strength)
    torch.testing.assert_close(reversed_values, plain, rtol=0, atol=0)
    (reversed_grad,) = torch.autograd.grad(head(reversed_values), inputs)
    torch.testing.assert_close(reversed_grad, -strength * plain_grad, rtol=1e-15, atol=0)


def test_reverse_gradient_rejects_negative_strength() -> None:
    with pytest.raises(ValueError, match="strength must be >= 0"):
        reverse_gradient(torch.ones(2), -0.5)


# --------------------------------------------------------------------- learnable temperature


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def test_global_temperature_matches_reference_init_and_range() -> None:
    temperature = LearnableTemperature()
    tau = temperature()
    assert tau.shape == ()
    # float32: sigmoid (exp to 1 ulp, +, /), ×, +: ≤ 4 roundings of values ≤ τ_max = 21
    assert tau.item() == pytest.approx(1.0 + 20.0 * _sigmoid(1.0), abs=float32_tolerance(4, 21))
    for logit in (-60.0, -3.0, 0.0, 4.0, 60.0):
        tau = LearnableTemperature(tau_min=2.0, tau_range=3.0, initial_logit=logit)().item()
        assert 2.0 <= tau <= 5.0
        expected = 2.0 + 3.0 * _sigmoid(logit)
        assert tau == pytest.approx(expected, abs=float32_tolerance(4, 5.0))  # as above, τ ≤ 5


@pytest.mark.parametrize("upstream", [2.5, -1.25])
def test_global_gradient_is_reversed_and_scaled(upstream: float) -> None:
    strength = 0.7
    temperature = LearnableTemperature(
        tau_min=1.0, tau_range=20.0, initial_logit=0.25, lambda_schedule=strength
    ).double()
    tau = temperature()
    (tau * upstream).sum().backward()
    # d loss / d tau = upstream; d tau / d theta = range * s (1 - s)
    sig = _sigmoid(0.25)  # 0.25 is exact in float32, so .double() keeps it
    loss_grad_theta = upstream * 20.0 * sig * (1.0 - sig)
    theta_grad = temperature.temperature_logit.grad.item()
    assert theta_grad == pytest.approx(-strength * loss_grad_theta, rel=1e-12)
    assert math.copysign(1.0, theta_grad) == -math.copysign(1.0, upstream)


def test_default_lambda_follows_reference_cosine_ramp() -> None:
    temperature = LearnableTemperature()
    assert temperature.reversal_strength == 0.0  # before any progress: λ(0) = λ_min
    total_steps = 2400  # the ramp lasts 10/240 of training: 100 steps here
    for step in (0, 1, 25, 50, 75, 99, 100, 101, 1200, 2400):
        temperature.set_progress(step, total_steps)
        fraction = min(step / 100, 1.0)
        expected = 0.0 + (1.0 - 0.0) * (1.0 - math.cos(math.pi * fraction)) / 2.0
        assert temperature.reversal_strength == pytest.approx(expected, abs=1e-12)


def test_lambda_schedule_drives_the_gradient() -> None:
    temperature = LearnableTemperature(lambda_schedule=Cosine(0.2, 0.8)).double()
    sig = _sigmoid(1.0)
    for step, expected in ((0, 0.2), (5, 0.5), (10, 0.8)):
        temperature.set_progress(step, 10)
        assert temperature.reversal_strength == pytest.approx(expected)
        temperature.zero_grad()
        (temperature() * 3.0).backward()
        grad = temperature.temperature_logit.grad.item()
        assert grad == pytest.approx(-expected * 3.0 * 20.0 * sig * (1 - sig), rel=1e-9)


def test_negative_lambda_is_rejected() -> None:
    with pytest.raises(ValueError, match="lambda_schedule must give values >= 0"):
        LearnableTemperature(lambda_schedule=-0.5)
    temperature = LearnableTemperature(lambda_schedule=Linear(0.0, -1.0))
    with pytest.raises(ValueError, match="lambda_schedule must give values >= 0"):
        temperature.set_progress(1, 1)


def test_one_sgd_step_raises_the_loss_through_tau_and_lowers_it_through_the_student() -> None:
    temperature = LearnableTemperature(initial_logit=0.0, lambda_schedule=1.0)
    student_weight = torch.nn.Parameter(torch.tensor(3.0))
    optimizer = torch.optim.SGD([*temperature.parameters(), student_weight], lr=0.01)

    def loss_value(tau: torch.Tensor) -> torch.Tensor:  # d loss / d tau = (w - 1)^2 >= 0
        return tau * (student_weight - 1.0) ** 2

    tau_before = temperature().item()
    loss_value(temperature()).backward()
    optimizer.step()
    assert temperature().item() > tau_before  # θ ascended the loss
    assert student_weight.item() < 3.0  # the student descended it
    with torch.no_grad():
        loss_new_tau = loss_value(temperature())
        loss_old_tau = loss_value(torch.tensor(tau_before))
    assert loss_new_tau > loss_old_tau


def _randomize_head(temperature: LearnableTemperature, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in temperature.logit_net[-1].parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("rows_shape", [(5,), (2, 3)])
def test_instance_temperature_shape_and_range(rows_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    temperature = LearnableTemperature("instance", num_classes=7, hidden_dim=8, tau_min=0.5)
    student_logits = torch.randn(*rows_shape, 7)
    teacher_logits = torch.randn(*rows_shape, 7)
    tau = temperature(student_logits, teacher_logits)
    assert tau.shape == rows_shape
    torch.testing.assert_close(tau, torch.full(rows_shape, 0.5 + 20.0 * _sigmoid(1.0)))
    _randomize_head(temperature, seed=1)
    tau = temperature(student_logits * 5, teacher_logits * 5)
    assert ((tau >= 0.5) & (tau <= 20.5)).all()
    assert tau.unique().numel() == tau.numel()  # one temperature per row


def _reference_instance_tau(
    temperature: LearnableTemperature, student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """Row by row, with argsort instead of topk, no gradient reversal."""
    first, _, last = temperature.logit_net
    top_k = temperature.top_k
    taus = []
    for student_row, teacher_row in zip(student_logits, teacher_logits, strict=True):
        teacher_probs = torch.exp(teacher_row) / torch.exp(teacher_row).sum()
        student_probs = torch.exp(student_row) / torch.exp(student_row).sum()
        order = torch.argsort(teacher_probs, descending=True)[:top_k]
        features = torch.cat([teacher_probs[order], student_probs[order]])
        hidden = torch.clamp(first.weight @ features + first.bias, min=0.0)
        logit = last.weight[0] @ hidden + last.bias[0]
        taus.append(temperature.tau_min + temperature.tau_range * torch.sigmoid(logit))
    return torch.stack(taus)


@pytest.mark.parametrize("top_k", [None, 3])
def test_instance_gradients_match_reversed_reference(top_k: int | None) -> None:
    torch.manual_seed(0)
    strength = 0.6
    temperature = LearnableTemperature(
        "instance", num_classes=6, top_k=top_k, hidden_dim=5, lambda_schedule=strength
    ).double()
    _randomize_head(temperature, seed=2)
    student_logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(4, 6, dtype=torch.float64)
    upstream = torch.randn(4, dtype=torch.float64)
    parameters = list(temperature.parameters())
    assert len(parameters) == 4

    tau = temperature(student_logits, teacher_logits)
    reference_tau = _reference_instance_tau(temperature, student_logits, teacher_logits)
    torch.testing.assert_close(tau, reference_tau, rtol=1e-12, atol=0)
    grads = torch.autograd.grad((tau * upstream).sum(), parameters)
    reference_grads = torch.autograd.grad((reference_tau * upstream).sum(), parameters)
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        assert reference_grad.abs().sum() > 0
        torch.testing.assert_close(grad, -strength * reference_grad, rtol=1e-10, atol=1e-14)
    tau = temperature(student_logits, teacher_logits)
    (student_grad,) = torch.autograd.grad(tau.sum(), student_logits, allow_unused=True)
    assert student_grad is None  # the temperature net never trains the student


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "batch"}, "mode must be 'global' or 'instance'"),
        ({"mode": "instance"}, "num_classes is required"),
        ({"tau_min": 0.0}, "tau_min must be > 0"),
        ({"tau_range": -1.0}, "tau_range must be > 0"),
        (
            {"mode": "instance", "num_classes": 5, "top_k": 6},
            r"top_k must be in \[1, num_classes=5\]",
        ),
        ({"mode": "instance", "num_classes": 5, "hidden_dim": 0}, "hidden_dim must be >= 1"),
    ],
)
def test_bad_temperature_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LearnableTemperature(**kwargs)


def test_instance_forward_checks_its_inputs() -> None:
    temperature = LearnableTemperature("instance", num_classes=4, hidden_dim=3)
    with pytest.raises(ValueError, match="needs student_logits and teacher_logits"):
        temperature(torch.randn(2, 4))
    with pytest.raises(ValueError, match="expected logits with num_classes=4 classes"):
        temperature(torch.randn(2, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="student has 4 classes, teacher 5"):
        temperature(torch.randn(2, 4), torch.randn(2, 5))


def test_extra_repr_shows_hyperparameters() -> None:
    text = repr(LearnableTemperature("instance", num_classes=4, top_k=2, hidden_dim=3))
    assert "mode='instance', tau_min=1.0, tau_range=20.0, num_classes=4, top_k=2" in text
    assert "lambda_schedule=Cosine(start=0.0, end=1.0" in text
