"""DeepInversion synthesis: float64 references of its terms (values and gradients), seeding,
the teacher left untouched, the competition term and the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkd.data.synthetic import (
    batchnorm_layers,
    bn_statistics_loss,
    deep_inversion,
    total_variation,
)
from torchkd.losses import jsd_loss
from torchkd.models import CNN1D, CNN1DBN


def reference_bn_statistics(inputs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """Brute force: each channel's mean and biased variance by explicit loops over its values."""
    channel_means, channel_vars = [], []
    for channel in range(inputs.shape[1]):
        values = [
            inputs[b, channel].reshape(-1)[i]
            for b in range(inputs.shape[0])
            for i in range(inputs[b, channel].numel())
        ]
        total = sum(values)
        mu = total / len(values)
        channel_means.append(mu)
        channel_vars.append(sum((v - mu) ** 2 for v in values) / len(values))
    mean_gap = sum((m - r) ** 2 for m, r in zip(channel_means, mean, strict=True)) ** 0.5
    var_gap = sum((v - r) ** 2 for v, r in zip(channel_vars, var, strict=True)) ** 0.5
    return mean_gap + var_gap


@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 2, 3, 4), (5, 3)])
def test_bn_statistics_loss_matches_brute_force_in_float64(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.5
    mean = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    var = torch.rand(shape[1], generator=generator, dtype=torch.float64) + 0.5
    torch.testing.assert_close(
        bn_statistics_loss(inputs, mean, var), reference_bn_statistics(inputs, mean, var)
    )
    arguments = tuple(t.clone().requires_grad_(True) for t in (inputs, mean, var))
    assert torch.autograd.gradcheck(bn_statistics_loss, arguments)
    (ours,) = torch.autograd.grad(bn_statistics_loss(*arguments), arguments[0])
    (brute,) = torch.autograd.grad(reference_bn_statistics(*arguments), arguments[0])
    torch.testing.assert_close(ours, brute)


def test_bn_statistics_loss_refuses_a_channel_mismatch() -> None:
    with pytest.raises(ValueError, match=r"C = 4 channels .* got \(2, 3, 5\)"):
        bn_statistics_loss(torch.zeros(2, 3, 5), torch.zeros(4), torch.ones(4))


def test_total_variation_matches_brute_force_in_float64() -> None:
    inputs = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    brute = sum((inputs[:, :, i + 1, :] - inputs[:, :, i, :]).square().sum() for i in range(3)) / (
        2 * 3 * 3 * 5
    ) + sum((inputs[:, :, :, j + 1] - inputs[:, :, :, j]).square().sum() for j in range(4)) / (
        2 * 3 * 4 * 4
    )
    torch.testing.assert_close(total_variation(inputs), brute)
    assert torch.autograd.gradcheck(total_variation, (inputs,))


def _teacher(seed: int = 0) -> CNN1DBN:
    """A small BatchNorm teacher whose running statistics are those of a "training set" unlike
    the synthesis' initial noise (a smooth, shifted, scaled sequence)."""
    torch.manual_seed(seed)
    teacher = CNN1DBN(width=4)
    data = 1.5 * torch.randn(64, 1, 40).cumsum(-1) / 4 + 0.5
    for layer in batchnorm_layers(teacher):
        layer.momentum = None  # running statistics: the cumulative average over batches
    with torch.no_grad():
        teacher.train()(data)
    return teacher


def _statistics_gap(teacher: nn.Module, inputs: torch.Tensor) -> float:
    layers = batchnorm_layers(teacher)
    captured: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda m, a, o: captured.append(a[0])) for layer in layers
    ]
    with torch.no_grad():
        teacher.eval()(inputs)
    for handle in handles:
        handle.remove()
    return sum(
        float(bn_statistics_loss(x, layer.running_mean, layer.running_var))
        for x, layer in zip(captured, layers, strict=True)
    )


def test_deep_inversion_is_seeded_and_matches_the_teachers_statistics() -> None:
    teacher = _teacher()
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    noise = torch.randn((12, 1, 40), generator=torch.Generator().manual_seed(3))
    inputs, targets = deep_inversion(teacher, 12, (1, 40), steps=30, batch_size=6, lr=0.1, seed=3)
    assert teacher.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # untouched
    assert targets.tolist() == [i % 10 for i in range(12)]
    assert _statistics_gap(teacher, inputs[:6]) < 0.5 * _statistics_gap(teacher, noise[:6])
    again, _ = deep_inversion(teacher, 12, (1, 40), steps=30, batch_size=6, lr=0.1, seed=3)
    other, _ = deep_inversion(teacher, 12, (1, 40), steps=30, batch_size=6, lr=0.1, seed=4)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)


def test_competition_term_drives_student_and_teacher_apart() -> None:
    teacher, student = _teacher(0), CNN1D(width=4)
    options = {"steps": 40, "batch_size": 10, "lr": 0.1, "bn_weight": 0.0}
    plain, _ = deep_inversion(teacher, 10, (1, 40), **options)
    competing, _ = deep_inversion(
        teacher, 10, (1, 40), student=student, competition_weight=20.0, **options
    )
    with torch.no_grad():
        teacher.eval(), student.eval()
        gaps = [float(jsd_loss(student(x), teacher(x))) for x in (plain, competing)]
    assert gaps[1] > gaps[0]


def test_refusals_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"CNN1D has no BatchNorm layer .* cnn1d_bn"):
        deep_inversion(CNN1D(width=4), 4, (1, 40), steps=1)
    with pytest.raises(ValueError, match="competition_weight > 0 needs a student"):
        deep_inversion(_teacher(), 4, (1, 40), steps=1, competition_weight=1.0)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        deep_inversion(_teacher(), 4, (1, 40), steps=0)
    with pytest.raises(ValueError, match="lr must be > 0, got 0"):
        deep_inversion(_teacher(), 4, (1, 40), lr=0.0)
