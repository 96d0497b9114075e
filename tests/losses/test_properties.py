"""Property-based checks (hypothesis) of the logit losses' mathematical invariants."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

import torchkd.losses as losses

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)
TEMPERATURES = st.floats(min_value=0.25, max_value=8.0)


@st.composite
def logit_pairs(draw: st.DrawFn, count: int = 2) -> list[torch.Tensor]:
    """``count`` float64 logit tensors of one random shape ``[B, C]`` with values in [-30, 30]."""
    rows = draw(st.integers(1, 4))
    classes = draw(st.integers(2, 6))
    values = st.floats(-30.0, 30.0, allow_nan=False, allow_infinity=False)
    return [
        torch.from_numpy(draw(arrays("float64", (rows, classes), elements=values)))
        for _ in range(count)
    ]


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES)
def test_forward_kl_is_non_negative(pair: list[torch.Tensor], temperature: float) -> None:
    student, teacher = pair
    assert (
        losses.kd_loss(student, teacher, temperature=temperature, reduction="none").min() >= -1e-12
    )


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES)
def test_reverse_kl_swaps_the_arguments_of_forward_kl(
    pair: list[torch.Tensor], temperature: float
) -> None:
    student, teacher = pair
    torch.testing.assert_close(
        losses.reverse_kl_loss(student, teacher, temperature=temperature),
        losses.kd_loss(teacher, student, temperature=temperature),
    )


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES)
def test_jsd_with_beta_one_half_is_symmetric(pair: list[torch.Tensor], temperature: float) -> None:
    student, teacher = pair
    forward = losses.jsd_loss(student, teacher, beta=0.5, temperature=temperature)
    backward = losses.jsd_loss(teacher, student, beta=0.5, temperature=temperature)
    torch.testing.assert_close(forward, backward)
    assert forward >= -1e-12


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES)
def test_total_variation_is_between_zero_and_one(
    pair: list[torch.Tensor], temperature: float
) -> None:
    values = losses.tvd_loss(*pair, temperature=temperature, reduction="none")
    assert values.min() >= -1e-12 and values.max() <= 1 + 1e-12


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES, st.data())
def test_dkd_is_non_negative(
    pair: list[torch.Tensor], temperature: float, data: st.DataObject
) -> None:
    student, teacher = pair
    labels = torch.tensor(
        data.draw(
            st.lists(
                st.integers(0, student.shape[-1] - 1),
                min_size=student.shape[0],
                max_size=student.shape[0],
            )
        )
    )
    values = losses.dkd_loss(student, teacher, labels, temperature=temperature, reduction="none")
    assert values.min() >= -1e-12


@PROPERTY_SETTINGS
@given(logit_pairs(count=4), TEMPERATURES, st.sampled_from(["mean", "entropy", "confidence"]))
def test_multi_teacher_is_non_negative_with_weights_summing_to_one(
    logits: list[torch.Tensor], temperature: float, weighting: str
) -> None:
    student, *teachers = logits
    labels = torch.zeros(student.shape[0], dtype=torch.long)
    value, weights = losses.multi_teacher_kd_loss(
        student,
        teachers,
        labels,
        weighting=weighting,
        temperature=temperature,
        reduction="none",
        return_weights=True,
    )
    assert value.min() >= -1e-12 and weights.min() >= 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(student.shape[0], dtype=torch.float64))


@PROPERTY_SETTINGS
@given(logit_pairs(), TEMPERATURES)
def test_dist_is_bounded_by_its_correlation_terms(
    pair: list[torch.Tensor], temperature: float
) -> None:
    """Each 1 - rho lies in [0, 2], so 0 <= DIST <= 2 T^2 (beta + gamma)."""
    value = losses.dist_loss(*pair, beta=1.0, gamma=0.5, temperature=temperature)
    assert -1e-12 <= value <= 2 * temperature**2 * 1.5 + 1e-9
