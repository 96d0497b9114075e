"""Feature losses beyond the template: 1-D maps, pooling, error messages, VID's Gaussian, FT's
two stages, and the attention of attention_align (weights, gradients, brute-force value)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import torchkd.losses as L
from torchkd.losses.attention_align import attention_align_loss, layer_attention
from torchkd.losses.factor_transfer import factor_transfer_loss
from torchkd.losses.feature import at_loss, fsp_loss, hint_loss, nst_loss
from torchkd.losses.pkt import pkt_loss
from torchkd.losses.vid import vid_loss

from .references import (
    at_reference,
    attention_align_reference,
    fsp_reference,
    nst_reference,
    softmax,
    unit_vector,
)

FEATURE_LOSSES = {
    "hint": "features",
    "at": "feature_lists",
    "nst": "features",
    "fsp": "feature_lists",
    "pkt": "embeddings",
    "vid": "features",
    "factor_transfer": "features",
    "attention_align": "feature_lists",
}


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors]


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(("name", "signature"), FEATURE_LOSSES.items())
def test_registered_as_feature_loss(name: str, signature: str) -> None:
    registered = L.entry(name)
    assert registered.family == "feature"
    assert registered.signature == signature
    assert name in L.available("feature")


def test_create_stateful_losses_with_engine_kwargs() -> None:
    vid = L.create("vid", num_input_channels=3, num_mid_channels=5, num_target_channels=4)
    ft = L.create("factor_transfer", student_channels=3, teacher_channels=4, spatial_dims=1)
    align = L.create("attention_align", student_channels=[3], teacher_channels=[4, 5])
    assert "num_mid_channels=5" in repr(vid)
    assert "stage='transfer'" in repr(ft) and "spatial_dims=1" in repr(ft)
    assert "teacher_channels=[4, 5]" in repr(align)


# --------------------------------------------------------------------------- 1-D maps, pooling


def test_one_dimensional_maps_match_references_and_gradcheck() -> None:
    students = [randn(2, 3, 6, seed=1).requires_grad_(), randn(2, 2, 3, seed=2).requires_grad_()]
    teachers = [randn(2, 4, 3, seed=3), randn(2, 2, 6, seed=4)]
    torch.testing.assert_close(
        at_loss(students, teachers).item(), at_reference(numpy(students), numpy(teachers))
    )
    torch.testing.assert_close(
        nst_loss(students[0], teachers[0]).item(), nst_reference(*numpy([students[0], teachers[0]]))
    )
    fsp_students = [students[0], randn(2, 2, 3, seed=5).requires_grad_()]
    fsp_teachers = [randn(2, 3, 4, seed=6), randn(2, 2, 2, seed=7)]
    torch.testing.assert_close(
        fsp_loss(fsp_students, fsp_teachers).item(),
        fsp_reference(numpy(fsp_students), numpy(fsp_teachers)),
    )
    assert gradcheck(lambda a, b: at_loss([a, b], teachers), tuple(students))
    assert gradcheck(lambda a: nst_loss(a, teachers[0]), (students[0],))
    assert gradcheck(lambda a, b: fsp_loss([a, b], fsp_teachers), tuple(fsp_students))


def test_pool_false_rejects_different_spatial_sizes_naming_shapes() -> None:
    student, teacher = randn(2, 3, 4, 4), randn(2, 3, 2, 2)
    for call in (
        lambda: at_loss(student, teacher, pool=False),
        lambda: nst_loss(student, teacher, pool=False),
    ):
        with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 2, 2\).*pool=True"):
            call()
    assert at_loss(student, teacher).item() > 0  # pooled by default


def test_spatial_rank_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"spatial dimensions.*\(2, 3, 4\).*\(2, 3, 4, 4\)"):
        at_loss(randn(2, 3, 4), randn(2, 3, 4, 4))


# --------------------------------------------------------------------------- hint AT NST FSP PKT


def test_hint_shape_mismatch_names_shapes_and_suggests_an_adapter() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 4, 4\).*adapter"):
        hint_loss(randn(2, 3, 4, 4), randn(2, 5, 4, 4))


def test_hint_mean_is_torch_mse() -> None:
    student, teacher = randn(3, 2, 5, seed=1), randn(3, 2, 5, seed=2)
    torch.testing.assert_close(hint_loss(student, teacher), F.mse_loss(student, teacher))


def test_at_single_pair_and_pair_reduction() -> None:
    students = [randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)]
    teachers = [randn(2, 6, 4, 4, seed=3), randn(2, 4, 2, 2, seed=4)]
    singles = [at_loss(s, t) for s, t in zip(students, teachers, strict=True)]
    torch.testing.assert_close(at_loss(students, teachers), singles[0] + singles[1])
    torch.testing.assert_close(
        at_loss(students, teachers, pair_reduction="mean"), (singles[0] + singles[1]) / 2
    )
    with pytest.raises(ValueError, match="2 student and 1 teacher"):
        at_loss(students, teachers[:1])
    with pytest.raises(ValueError, match=r"\[B, C, \*spatial\].*\(2, 3\)"):
        at_loss(randn(2, 3), randn(2, 3))


def test_at_is_invariant_to_feature_scale() -> None:
    student, teacher = randn(2, 3, 4, 4, seed=1), randn(2, 3, 4, 4, seed=2)
    torch.testing.assert_close(at_loss(5.0 * student, teacher), at_loss(student, teacher))


def test_nst_accepts_different_channel_counts_and_rejects_batch_mismatch() -> None:
    assert nst_loss(randn(2, 3, 3, 3), randn(2, 7, 3, 3)).item() > 0
    with pytest.raises(ValueError, match=r"batch size.*\(2, 3, 3, 3\).*\(3, 3, 3, 3\)"):
        nst_loss(randn(2, 3, 3, 3), randn(3, 3, 3, 3))


def test_fsp_needs_matching_channels_and_two_layers() -> None:
    students = [randn(2, 3, 4, 4), randn(2, 2, 4, 4)]
    teachers = [randn(2, 3, 4, 4), randn(2, 5, 4, 4)]
    with pytest.raises(ValueError, match=r"student_features\[1\] \(2, 2, 4, 4\).*\(2, 5, 4, 4\)"):
        fsp_loss(students, teachers)
    with pytest.raises(ValueError, match=">= 2"):
        fsp_loss(students[:1], teachers[:1])


def test_pkt_flattens_maps_and_rejects_batch_mismatch() -> None:
    student, teacher = randn(4, 2, 3, seed=1), randn(4, 5, seed=2)
    torch.testing.assert_close(pkt_loss(student, teacher), pkt_loss(student.flatten(1), teacher))
    with pytest.raises(ValueError, match=r"batch size.*\(4, 5\).*\(3, 5\)"):
        pkt_loss(randn(4, 5), randn(3, 5))


# --------------------------------------------------------------------------- VID


def test_vid_loss_is_the_gaussian_nll_without_its_constant() -> None:
    mean, target = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2)
    variance = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    expected = 0.0
    for b, c, x in np.ndindex(2, 3, 4):
        var, residual = float(variance[c]), float(target[b, c, x] - mean[b, c, x])
        density = math.exp(-(residual**2) / (2 * var)) / math.sqrt(2 * math.pi * var)
        expected += -math.log(density) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(vid_loss(mean, variance, target).item(), expected / 24)
    full_variance = variance.reshape(1, 3, 1).expand(2, 3, 4)
    torch.testing.assert_close(vid_loss(mean, full_variance, target).item(), expected / 24)


def test_vid_loss_gradcheck_and_optimal_variance() -> None:
    mean = randn(2, 3, 2, 2, seed=1).requires_grad_()
    target = randn(2, 3, 2, 2, seed=2).requires_grad_()
    variance = (randn(3, seed=3).abs() + 0.5).requires_grad_()
    assert gradcheck(vid_loss, (mean, variance, target))
    # d/dvar of the NLL vanishes at var_c = mean squared residual of channel c
    optimal = (target - mean).detach().pow(2).mean(dim=(0, 2, 3)).requires_grad_()
    (gradient,) = torch.autograd.grad(vid_loss(mean.detach(), optimal, target.detach()), optimal)
    torch.testing.assert_close(gradient, torch.zeros_like(gradient))


def test_vid_rejects_bad_variance_shape_and_channels() -> None:
    with pytest.raises(ValueError, match=r"pred_var must have shape \(3,\).*\(2,\)"):
        vid_loss(randn(2, 3, 4), randn(2), randn(2, 3, 4))
    loss = L.create("vid", num_input_channels=3, num_mid_channels=4, num_target_channels=5)
    with pytest.raises(ValueError, match=r"teacher_feature must be \[B, 5, \.\.\.\].*\(2, 6, 4\)"):
        loss(torch.randn(2, 3, 4), torch.randn(2, 6, 4))


def test_vid_module_initial_variance_gradients_and_embeddings() -> None:
    torch.manual_seed(0)
    loss = L.create(
        "vid", num_input_channels=3, num_mid_channels=4, num_target_channels=5, init_pred_var=2.5
    )
    torch.testing.assert_close(loss.variance(), torch.full((5,), 2.5))
    value = loss(torch.randn(4, 3), torch.randn(4, 5))  # [B, C] embeddings work too
    value.backward()
    assert loss.raw_variance.grad is not None and loss.raw_variance.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.regressor.parameters())


# --------------------------------------------------------------------------- factor transfer


def test_factor_transfer_loss_reference_and_gradcheck() -> None:
    student = randn(2, 3, 2, 2, seed=1).requires_grad_()
    teacher = randn(2, 3, 2, 2, seed=2).requires_grad_()
    for p in (1.0, 2.0):
        units = [
            unit_vector(f[b].detach().flatten().tolist())
            for f in (student, teacher)
            for b in (0, 1)
        ]
        expected = sum(
            abs(s - t) ** p for b in (0, 1) for s, t in zip(units[b], units[2 + b], strict=True)
        ) / (2 * 12)
        torch.testing.assert_close(factor_transfer_loss(student, teacher, p=p).item(), expected)
        assert gradcheck(lambda s, t, p=p: factor_transfer_loss(s, t, p=p), (student, teacher))
    with pytest.raises(ValueError, match=r"\(2, 3, 2, 2\).*\(2, 4, 2, 2\)"):
        factor_transfer_loss(student, randn(2, 4, 2, 2))


def _factor_transfer(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return L.create("factor_transfer", student_channels=3, teacher_channels=4, **kwargs)


def test_factor_transfer_paraphraser_stage_trains_only_the_paraphraser() -> None:
    loss = _factor_transfer(stage="paraphraser")
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 4, 4, 4)
    value = loss(student, teacher)
    _, reconstruction = loss.paraphraser(teacher)
    torch.testing.assert_close(value, F.mse_loss(reconstruction, teacher))
    value.backward()
    assert all(p.grad is not None for p in loss.paraphraser.parameters())
    assert all(p.grad is None for p in loss.translator.parameters())
    assert student.grad is None


def test_factor_transfer_paraphraser_learns_to_reconstruct() -> None:
    loss = _factor_transfer(stage="paraphraser")
    # teacher features with 2 degrees of freedom per position: the 2-channel factor can hold them
    teacher = torch.einsum("oi,bixy->boxy", torch.randn(4, 2), torch.randn(4, 2, 3, 3))
    optimizer = torch.optim.Adam(loss.parameters(), lr=3e-2)
    values = []
    for _ in range(40):
        value = loss(torch.zeros(4, 3, 3, 3), teacher)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < 0.3 * values[0], values


def test_factor_transfer_transfer_stage_freezes_the_paraphraser() -> None:
    trained = _factor_transfer(stage="paraphraser")
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.1)  # stands in for stage-1 training
    loss = _factor_transfer(stage="transfer")
    loss.load_state_dict(trained.state_dict())  # how a recipe carries stage 1 into stage 2
    assert not any(p.requires_grad for p in loss.paraphraser.parameters())
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 4, 2, 2, requires_grad=True)  # lower resolution: pooled
    value = loss(student, teacher)
    teacher_factor = trained.paraphraser.encoder(teacher).detach()
    student_factor = F.adaptive_avg_pool2d(loss.translator(student), (2, 2))
    torch.testing.assert_close(value, factor_transfer_loss(student_factor, teacher_factor))
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert all(p.grad is not None for p in loss.translator.parameters())
    assert all(p.grad is None for p in loss.paraphraser.parameters())
    loss.stage = "paraphraser"
    assert all(p.requires_grad for p in loss.paraphraser.parameters())


def test_factor_transfer_rejects_bad_stage_and_layout() -> None:
    with pytest.raises(ValueError, match="stage must be"):
        _factor_transfer(stage="pretrain")
    loss = _factor_transfer(spatial_dims=1)
    assert loss(torch.randn(2, 3, 6), torch.randn(2, 4, 6)).dim() == 0
    with pytest.raises(ValueError, match=r"1 spatial dimension.*\(2, 3, 4, 4\)"):
        loss(torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4))


# --------------------------------------------------------------------------- attention_align


def _aligned() -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    loss = L.create(
        "attention_align", student_channels=[2, 3], teacher_channels=[3, 2, 4], embed_dim=4
    ).double()
    students = [randn(3, 2, 4, 4, seed=1), randn(3, 3, 2, 2, seed=2)]
    teachers = [randn(3, 3, 2, 2, seed=3), randn(3, 2, 4, 4, seed=4), randn(3, 4, seed=5)]
    return loss, students, teachers


def test_attention_weights_are_per_sample_distributions() -> None:
    loss, students, teachers = _aligned()
    weights = loss.attention_weights(students, teachers)
    assert weights.shape == (3, 2, 3)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 2, dtype=torch.float64))
    assert (weights > 0).all()
    assert not torch.allclose(weights[0], weights[1])  # each sample has its own attention


def test_attention_align_gradient_reaches_queries_keys_and_adapters() -> None:
    loss, students, teachers = _aligned()
    students = [s.requires_grad_() for s in students]
    loss(students, teachers).backward()
    for group in (loss.queries, loss.keys, loss.adapters):
        for parameter in group.parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(s.grad.abs().sum() > 0 for s in students)


def test_attention_align_value_is_the_weighted_distance() -> None:
    loss, students, teachers = _aligned()
    weights = loss.attention_weights(students, teachers)
    distances = loss.pair_distances(students, teachers)
    value = loss(students, teachers)
    torch.testing.assert_close(value, (weights * distances).sum(dim=(1, 2)).mean())
    expected = attention_align_reference(numpy(students), numpy(teachers), module=loss)
    torch.testing.assert_close(value.item(), expected)


def test_attention_align_loss_functional_reference_and_gradcheck() -> None:
    queries = randn(2, 2, 3, seed=1).requires_grad_()
    keys = randn(2, 4, 3, seed=2).requires_grad_()
    distances = randn(2, 2, 4, seed=3).abs().requires_grad_()
    expected = 0.0
    for b, s in np.ndindex(2, 2):
        logits = [
            float(queries[b, s].detach() @ keys[b, t].detach()) / math.sqrt(3) for t in range(4)
        ]
        weights = softmax(np.array(logits))
        expected += sum(w * float(distances[b, s, t].detach()) for t, w in enumerate(weights)) / 2
    torch.testing.assert_close(attention_align_loss(queries, keys, distances).item(), expected)
    assert gradcheck(attention_align_loss, (queries, keys, distances))
    torch.testing.assert_close(
        layer_attention(queries, keys).sum(dim=-1), torch.ones(2, 2, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"pair_distances must be \[B, S, T\] = \(2, 2, 4\)"):
        attention_align_loss(queries, keys, distances[:, :, :3])


def test_attention_align_rejects_layouts_it_cannot_adapt() -> None:
    loss, students, teachers = _aligned()
    with pytest.raises(ValueError, match="list of 3 layers, got 2 layers"):
        loss(students, teachers[:2])
    with pytest.raises(ValueError, match=r"student_features\[1\] must be \[B, 3, \.\.\.\]"):
        loss([students[0], randn(3, 5, 2, 2)], teachers)
    with pytest.raises(ValueError, match="different spatial ranks"):
        loss([students[0], randn(3, 3)], teachers)
