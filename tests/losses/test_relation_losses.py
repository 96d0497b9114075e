"""RKD, SP and CC against brute-force loop references (float64), gradcheck, and edge cases."""

from __future__ import annotations

import pytest
import torch

import torchkd.losses as L
from torchkd.losses.relation import CCLoss, RKDLoss, SPLoss, cc_loss, rkd_loss, sp_loss

from .references import cc_reference, rkd_reference, sp_reference


def _pair(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(student_shape, generator=generator, dtype=torch.float64)
    teacher = torch.randn(teacher_shape, generator=generator, dtype=torch.float64)
    return student, teacher


@pytest.mark.parametrize("teacher_dim", [4, 9])
@pytest.mark.parametrize(("distance_weight", "angle_weight"), [(25.0, 50.0), (1.0, 0.0), (0, 2.0)])
def test_rkd_matches_loop_reference(teacher_dim, distance_weight, angle_weight):
    student, teacher = _pair((5, 4), (5, teacher_dim))
    got = rkd_loss(student, teacher, distance_weight=distance_weight, angle_weight=angle_weight)
    expected = rkd_reference(
        student.numpy(),
        teacher.numpy(),
        distance_weight=distance_weight,
        angle_weight=angle_weight,
    )
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_rkd_large_differences_use_linear_branch_of_smooth_l1():
    student, teacher = _pair((4, 3), (4, 3), seed=3)
    teacher[0] *= 40.0  # one far outlier: normalized distance differences exceed 1
    got = rkd_loss(student, teacher)
    assert got.item() == pytest.approx(rkd_reference(student.numpy(), teacher.numpy()), rel=1e-10)


def test_rkd_invariant_to_rotation_scale_translation_of_teacher():
    student, _ = _pair((6, 3), (6, 3))
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    teacher = 2.5 * student @ rotation + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert rkd_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_loss(student, teacher.flip(0)).item() > 1e-3


@pytest.mark.parametrize("teacher_shape", [(5, 3), (5, 2, 3)])
def test_sp_matches_loop_reference(teacher_shape):
    student, teacher = _pair((5, 2, 2), teacher_shape)
    got = sp_loss(student, teacher)
    assert got.item() == pytest.approx(sp_reference(student.numpy(), teacher.numpy()), rel=1e-10)


def test_sp_list_is_sum_of_pairs():
    first_s, first_t = _pair((4, 3), (4, 6), seed=1)
    second_s, second_t = _pair((4, 2, 2), (4, 5), seed=2)
    total = sp_loss([first_s, second_s], [first_t, second_t])
    expected = sp_reference(first_s.numpy(), first_t.numpy()) + sp_reference(
        second_s.numpy(), second_t.numpy()
    )
    assert total.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("gamma", "order", "teacher_dim"), [(0.4, 2, 6), (1.0, 0, 6), (0.7, 4, 3)])
def test_cc_matches_loop_reference(gamma, order, teacher_dim):
    student, teacher = _pair((5, 6), (5, teacher_dim))
    got = cc_loss(student, teacher, gamma=gamma, order=order)
    expected = cc_reference(student.numpy(), teacher.numpy(), gamma=gamma, order=order)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_cc_high_order_converges_to_exact_rbf_kernel():
    student, teacher = _pair((5, 6), (5, 6))

    def exact(features: torch.Tensor, gamma: float) -> torch.Tensor:
        unit = torch.nn.functional.normalize(features, dim=1)
        return torch.exp(-gamma * torch.cdist(unit, unit) ** 2)

    gamma = 0.4
    exact_loss = ((exact(student, gamma) - exact(teacher, gamma)) ** 2).mean()
    assert cc_loss(student, teacher, gamma=gamma, order=20).item() == pytest.approx(
        exact_loss.item(), rel=1e-9
    )
    assert cc_loss(student, teacher, gamma=gamma, order=1).item() != pytest.approx(
        exact_loss.item(), rel=1e-3
    )


@pytest.mark.parametrize(
    ("function", "student_shape", "teacher_shape"),
    [
        (rkd_loss, (4, 3), (4, 5)),
        (lambda s, t: rkd_loss(s, t, distance_weight=0.0), (4, 3), (4, 5)),
        (sp_loss, (4, 2, 2), (4, 3)),
        (cc_loss, (4, 3), (4, 3)),
    ],
)
def test_gradcheck_both_inputs(function, student_shape, teacher_shape):
    student, teacher = _pair(student_shape, teacher_shape, seed=7)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    assert torch.autograd.gradcheck(function, (student, teacher))


def test_rkd_gradient_is_finite_with_duplicate_rows():
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    rkd_loss(student, torch.randn(3, 4)).backward()
    assert torch.isfinite(student.grad).all()


def test_modules_and_registry():
    student, teacher = _pair((4, 3), (4, 5))
    assert L.entry("rkd").signature == "embeddings"
    assert L.entry("sp").signature == "features"
    assert L.entry("cc").signature == "embeddings"
    assert {"rkd", "sp", "cc"} <= set(L.available("relation"))
    rkd = L.create("rkd", distance_weight=1.0, angle_weight=2.0)
    assert isinstance(rkd, RKDLoss)
    assert repr(rkd) == "RKDLoss(distance_weight=1.0, angle_weight=2.0)"
    expected = rkd_loss(student, teacher, distance_weight=1.0, angle_weight=2.0)
    assert torch.equal(rkd(student, teacher), expected)
    assert torch.equal(SPLoss()(student, teacher), sp_loss(student, teacher))
    assert repr(CCLoss(gamma=0.5, order=3)) == "CCLoss(gamma=0.5, order=3)"
    cc_student, cc_teacher = _pair((4, 3), (4, 3))
    assert torch.equal(
        L.create("cc", gamma=0.5)(cc_student, cc_teacher),
        cc_loss(cc_student, cc_teacher, gamma=0.5),
    )


def test_half_precision_is_computed_in_float32():
    student, teacher = _pair((6, 4), (6, 5))
    for function in (rkd_loss, sp_loss):
        low = function(student.bfloat16(), teacher.bfloat16())
        assert low.dtype == torch.float32  # computed and returned in float32
        full = function(student.bfloat16().double(), teacher.bfloat16().double())
        assert low.double().item() == pytest.approx(full.item(), rel=1e-2)


def test_bad_inputs_raise_clear_errors():
    student, teacher = _pair((4, 3), (5, 3))
    for function in (rkd_loss, sp_loss, cc_loss):
        with pytest.raises(ValueError, match="same batch size"):
            function(student, teacher)
    with pytest.raises(ValueError, match="at least 2 samples"):
        rkd_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 2 dims"):
        cc_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        sp_loss(torch.ones(3, 2, dtype=torch.long), torch.randn(3, 2))
    with pytest.raises(ValueError, match="same length"):
        sp_loss([torch.randn(3, 2)], [torch.randn(3, 2), torch.randn(3, 2)])
    with pytest.raises(TypeError, match="both be tensors or both be sequences"):
        sp_loss(torch.randn(3, 2), [torch.randn(3, 2)])
    with pytest.raises(ValueError, match="gamma"):
        CCLoss(gamma=0.0)
    with pytest.raises(ValueError, match="order"):
        cc_loss(torch.randn(3, 2), torch.randn(3, 2), order=1.5)
    with pytest.raises(ValueError, match="distance_weight"):
        RKDLoss(distance_weight=-1.0)
