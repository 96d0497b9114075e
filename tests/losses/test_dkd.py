"""DKD specifics beyond the template: the paper's decomposition and the authors' numerics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchkd.losses import DKDLoss, dkd_loss


def logits_and_labels(rows: int = 6, classes: int = 7, scale: float = 3.0):
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale
    teacher = torch.randn(rows, classes, generator=generator, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return student, teacher, labels


def authors_formulation(student, teacher, labels, alpha, beta, temperature):
    """DKD as the authors compute it: summed binary probabilities, target logit minus 1000."""
    target = F.one_hot(labels, student.shape[-1]).bool()
    p_student = (student / temperature).softmax(-1)
    p_teacher = (teacher / temperature).softmax(-1)
    binary_student = torch.stack([p_student[target], p_student.masked_fill(target, 0).sum(-1)], -1)
    binary_teacher = torch.stack([p_teacher[target], p_teacher.masked_fill(target, 0).sum(-1)], -1)
    tckd = F.kl_div(binary_student.log(), binary_teacher, reduction="sum")
    nckd = F.kl_div(
        (student / temperature - 1000.0 * target).log_softmax(-1),
        (teacher / temperature - 1000.0 * target).softmax(-1),
        reduction="sum",
    )
    return (alpha * tckd + beta * nckd) * temperature**2 / student.shape[0]


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_matches_the_authors_formulation_on_ordinary_logits(alpha, beta, temperature):
    student, teacher, labels = logits_and_labels()
    expected = authors_formulation(student, teacher, labels, alpha, beta, temperature)
    value = dkd_loss(student, teacher, labels, alpha=alpha, beta=beta, temperature=temperature)
    torch.testing.assert_close(value, expected)


def test_stays_finite_where_the_authors_formulation_is_not():
    student, teacher, labels = logits_and_labels(scale=1e4)
    assert not torch.isfinite(authors_formulation(student, teacher, labels, 1.0, 8.0, 4.0))
    assert torch.isfinite(dkd_loss(student, teacher, labels))


def test_kd_is_tckd_plus_weighted_nckd():
    """Paper eq. (5): KD = TCKD + (1 - p^T_target) NCKD, per row."""
    student, teacher, labels = logits_and_labels()
    temperature = 2.0
    tckd = dkd_loss(
        student, teacher, labels, alpha=1.0, beta=0.0, temperature=temperature, reduction="none"
    )
    nckd = dkd_loss(
        student, teacher, labels, alpha=0.0, beta=1.0, temperature=temperature, reduction="none"
    )
    kd = (
        F.kl_div(
            (student / temperature).log_softmax(-1),
            (teacher / temperature).softmax(-1),
            reduction="none",
        ).sum(-1)
        * temperature**2
    )
    teacher_target = (teacher / temperature).softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(kd, tckd + (1 - teacher_target) * nckd)


def test_weights_may_exceed_one_but_not_be_negative():
    student, teacher, labels = logits_and_labels()
    assert dkd_loss(student, teacher, labels, alpha=2.0, beta=8.0) > 0
    with pytest.raises(ValueError, match="alpha"):
        dkd_loss(student, teacher, labels, alpha=-0.1)
    with pytest.raises(ValueError, match="beta"):
        DKDLoss(beta=-1.0)


def test_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
