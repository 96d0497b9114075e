"""The hybrid loss's reductions (KL with one vocabulary, ULD with none shared), its value and
gradient against the float64 reference across vocabularies, and its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchkd.losses import hybrid_uld_loss, uld_loss

from .hybrid_uld_reference import hybrid_uld_reference

T = 2.0


def logits(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * 2


def test_one_vocabulary_gives_the_kd_kl_and_none_shared_gives_uld() -> None:
    student, teacher = logits(3, 4, 7), logits(3, 4, 7, seed=1)
    labels = torch.randint(0, 7, (3, 4), generator=torch.Generator().manual_seed(2))
    labels[1, 2] = -100
    identity = torch.arange(7).repeat(2, 1).T
    kept = labels != -100
    log_p, log_q = F.log_softmax(student / T, -1), F.log_softmax(teacher / T, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)[kept].mean() * T**2
    value = hybrid_uld_loss(student, teacher, labels, shared_ids=identity, temperature=T)
    torch.testing.assert_close(value, kl, rtol=1e-12, atol=0)
    wider = logits(3, 4, 9, seed=3)
    expected = uld_loss(student, wider, labels, temperature=T)
    for unshared in ([], None):
        torch.testing.assert_close(
            hybrid_uld_loss(student, wider, labels, shared_ids=unshared, temperature=T),
            expected,
            rtol=1e-12,
            atol=0,
        )


def test_values_and_gradients_against_the_reference_across_vocabularies() -> None:
    student, teacher = logits(5, 6), logits(5, 9, seed=1)
    shared = [[0, 8], [2, 0], [3, 3], [5, 1]]
    labels = torch.tensor([0, -100, 3, 5, 1])
    options = {"shared_ids": shared, "temperature": 1.5, "hard_label_weight": 0.25}
    expected = hybrid_uld_reference(student.numpy(), teacher.numpy(), labels.numpy(), **options)
    value = hybrid_uld_loss(student, teacher, labels, **options)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))

    def function(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return hybrid_uld_loss(s, t, labels, **options)

    both = (student.requires_grad_(), teacher.requires_grad_())
    assert torch.autograd.gradcheck(function, both)


@pytest.mark.parametrize(
    ("shared_ids", "error", "match"),
    [
        ([[0.0, 1.0]], TypeError, "integer token ids"),
        ([[0, 1, 2]], ValueError, r"\[K, 2\]"),
        ([[0, 9]], ValueError, r"teacher ids must lie in \[0, 6\)"),
        ([[0, 1], [0, 2]], ValueError, "a student id appears twice"),
    ],
)
def test_bad_maps_are_refused_by_name(shared_ids, error, match) -> None:
    with pytest.raises(error, match=match):
        hybrid_uld_loss(logits(2, 5), logits(2, 6), shared_ids=shared_ids)
