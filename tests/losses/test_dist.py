"""DIST specifics beyond the template: batch-level reduction and degenerate batches."""

from __future__ import annotations

import pytest
import torch

from torchkd.losses import DISTLoss, dist_loss


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_per_row_reductions_are_refused(reduction):
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="intra-class"):
        dist_loss(logits, logits, reduction=reduction)
    with pytest.raises(ValueError, match="intra-class"):
        DISTLoss(reduction=reduction)


def test_batchmean_and_mean_coincide():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 5, generator=generator)
    assert dist_loss(student, teacher, reduction="mean") == dist_loss(student, teacher)


def test_one_row_gives_the_constant_intra_term():
    """One sample: each class column is constant, its correlation 0, so intra = gamma T^2."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(1, 5, generator=generator, requires_grad=True)
    teacher = torch.randn(1, 5, generator=generator)
    only_intra = dist_loss(student, teacher, beta=0.0, gamma=0.5, temperature=2.0)
    assert only_intra.item() == pytest.approx(0.5 * 4.0)
    dist_loss(student, teacher).backward()
    assert torch.isfinite(student.grad).all()


def test_weights_must_be_non_negative():
    logits = torch.randn(4, 5)
    with pytest.raises(ValueError, match="gamma"):
        dist_loss(logits, logits, gamma=-1.0)
