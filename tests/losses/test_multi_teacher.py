"""Multi-teacher KD specifics beyond the template: weighting schemes and their errors."""

from __future__ import annotations

import pytest
import torch

from torchkd.losses import (
    MultiTeacherKDLoss,
    kd_loss,
    multi_teacher_kd_loss,
    weights_from_accuracies,
)

WEIGHTINGS = ["mean", "entropy", "confidence", torch.tensor([0.2, 0.8])]


def batch(teachers: int = 2, rows: int = 5, classes: int = 4):
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    teacher_logits = [
        torch.randn(rows, classes, generator=generator, dtype=torch.float64) * 2
        for _ in range(teachers)
    ]
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return student, teacher_logits, labels


@pytest.mark.parametrize("weighting", WEIGHTINGS[:3], ids=str)
def test_one_teacher_is_kd(weighting):
    student, (teacher,), labels = batch(teachers=1)
    value = multi_teacher_kd_loss(student, [teacher], labels, weighting=weighting, temperature=2.0)
    torch.testing.assert_close(value, kd_loss(student, teacher, temperature=2.0))


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=str)
def test_identical_teachers_give_kd(weighting):
    student, (teacher, _), labels = batch()
    pair = [teacher, teacher.clone()]
    value = multi_teacher_kd_loss(student, pair, labels, weighting=weighting, temperature=3.0)
    torch.testing.assert_close(value, kd_loss(student, teacher, temperature=3.0))


@pytest.mark.parametrize("weighting", WEIGHTINGS, ids=str)
def test_weights_are_per_row_distributions_and_zero_on_masked_rows(weighting):
    student, teachers, labels = batch(teachers=3 if not torch.is_tensor(weighting) else 2)
    mask = torch.tensor([True, False, True, True, False])
    _, weights = multi_teacher_kd_loss(
        student, teachers, labels, weighting=weighting, mask=mask, return_weights=True
    )
    assert weights.shape == (5, len(teachers)) and not weights.requires_grad
    assert (weights >= 0).all() and (weights[~mask] == 0).all()
    torch.testing.assert_close(weights[mask].sum(-1), torch.ones(3, dtype=torch.float64))


def test_entropy_prefers_the_certain_teacher():
    certain, unsure = torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[0.1, 0.0, 0.0]])
    _, weights = multi_teacher_kd_loss(
        torch.zeros(1, 3), [unsure, certain], weighting="entropy", return_weights=True
    )
    assert weights[0, 1] > 0.5 > weights[0, 0]


def test_confidence_prefers_the_teacher_right_on_the_label():
    right, wrong = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    _, weights = multi_teacher_kd_loss(
        torch.zeros(1, 3),
        [wrong, right],
        torch.tensor([0]),
        weighting="confidence",
        return_weights=True,
    )
    assert weights[0, 1] > 0.5 > weights[0, 0]


def test_confidence_with_two_teachers_is_a_softmax_of_negative_cross_entropy():
    """CA-MKD's (1 - softmax(CE)) / (M - 1) equals softmax(-CE) when M = 2 (not for M > 2)."""
    student, teachers, labels = batch(teachers=2)
    _, weights = multi_teacher_kd_loss(
        student, teachers, labels, weighting="confidence", return_weights=True
    )
    cross_entropy = torch.stack(
        [-t.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1) for t in teachers], -1
    )
    torch.testing.assert_close(weights, (-cross_entropy).softmax(-1))


def test_confidence_needs_labels():
    student, teachers, _ = batch()
    with pytest.raises(ValueError, match="needs labels"):
        multi_teacher_kd_loss(student, teachers, weighting="confidence")


@pytest.mark.parametrize(
    ("weighting", "error", "match"),
    [
        (torch.tensor([1.0, 1.0, 1.0]), ValueError, r"shape \(2,\)"),
        (torch.tensor([1.0, -0.5]), ValueError, ">= 0"),
        (torch.tensor([0.0, 0.0]), ValueError, "positive sum"),
        (torch.tensor([1, 2]), TypeError, "floating"),
        ("uniform", ValueError, "weighting must be one of"),
    ],
    ids=["length", "negative", "zero_sum", "integer", "unknown"],
)
def test_bad_weighting_raises(weighting, error, match):
    student, teachers, labels = batch()
    with pytest.raises(error, match=match):
        multi_teacher_kd_loss(student, teachers, labels, weighting=weighting)


def test_stacked_tensor_of_teachers_is_refused():
    student, teachers, _ = batch()
    with pytest.raises(TypeError, match="list or tuple"):
        multi_teacher_kd_loss(student, torch.stack(teachers))


def test_module_keeps_fixed_weights_as_a_buffer():
    student, teachers, labels = batch()
    module = MultiTeacherKDLoss(weighting=torch.tensor([1.0, 3.0]), temperature=2.0)
    assert "weights" in module.state_dict()
    module = module.to(torch.float64)
    expected = multi_teacher_kd_loss(
        student, teachers, labels, weighting=torch.tensor([0.25, 0.75]), temperature=2.0
    )
    torch.testing.assert_close(module(student, teachers, labels), expected)
    assert "weighting=[1.0, 3.0]" in repr(module)


def test_weights_from_accuracies():
    torch.testing.assert_close(
        weights_from_accuracies([0.8, 0.6, 0.6]), torch.tensor([0.4, 0.3, 0.3])
    )
    sharp = weights_from_accuracies([0.95, 0.90], temperature=0.01)
    flat = weights_from_accuracies([0.95, 0.90], temperature=10.0)
    assert sharp[0] > 0.99 and abs(flat[0] - 0.5) < 0.01
    torch.testing.assert_close(sharp.sum(), torch.tensor(1.0))
    for bad in ([95.0, 90.0], [], [[0.9]]):
        with pytest.raises(ValueError):
            weights_from_accuracies(bad)
    with pytest.raises(ValueError, match="temperature"):
        weights_from_accuracies([0.9, 0.8], temperature=0.0)
