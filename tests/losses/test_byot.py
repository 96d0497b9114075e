""" "Be Your Own Teacher": ``byot_loss`` against its brute-force float64 reference on values and
on gradients (central differences of the reference), no gradient into the deepest exit, and the
``self_exits`` call wiring a ``cnn1d_exits`` student's own taps into it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchkd.distiller import Distiller, Term
from torchkd.losses import byot_loss
from torchkd.models import CNN1DExits

from .references import byot_reference

KWARGS = {"temperature": 2.5, "alpha": 0.4, "hint_weight": 0.2}


def _inputs(exits: int = 2) -> tuple[list, list, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * 2

    return (
        [draw(5, 4).requires_grad_() for _ in range(exits)],
        [draw(5, 3, 2).requires_grad_() for _ in range(exits)],
        draw(5, 4).requires_grad_(),
        draw(5, 3, 2).requires_grad_(),
        torch.randint(0, 4, (5,), generator=generator),
    )


def _numpy(inputs):
    return [
        [t.detach().numpy() for t in item] if isinstance(item, list) else item.detach().numpy()
        for item in inputs
    ]


def test_value_and_gradients_match_the_reference() -> None:
    inputs = _inputs()
    loss = byot_loss(*inputs, **KWARGS)
    expected = byot_reference(*_numpy(inputs), **KWARGS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    step = 1e-6
    for side in (0, 1):  # each exit's logits and features: central differences of the reference
        for position, tensor in enumerate(inputs[side]):
            numeric = np.zeros(tensor.shape)
            for index in np.ndindex(*tensor.shape):
                values = []
                for sign in (1, -1):
                    arrays = _numpy(inputs)
                    arrays[side][position] = arrays[side][position].copy()
                    arrays[side][position][index] += sign * step
                    values.append(byot_reference(*arrays, **KWARGS))
                numeric[index] = (values[0] - values[1]) / (2 * step)
            np.testing.assert_allclose(tensor.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)
    assert inputs[2].grad is None and inputs[3].grad is None  # the deepest exit is a target


def test_one_exit_equal_to_the_deepest_leaves_its_cross_entropy() -> None:
    _, _, final, final_features, labels = _inputs(exits=1)
    loss = byot_loss([final], [final_features], final, final_features, labels, **KWARGS)
    ce = torch.nn.functional.cross_entropy(final, labels)
    assert loss.item() == pytest.approx((1 - KWARGS["alpha"]) * ce.item(), rel=1e-12)


def test_unlabeled_rows_keep_their_kl_and_hint_parts() -> None:
    exits, features, final, final_features, labels = _inputs()
    labels = labels.clone()
    labels[[1, 3]] = -100
    rows = byot_loss(exits, features, final, final_features, labels, **KWARGS, reduction="none")
    expected = byot_reference(*_numpy([exits, features, final, final_features, labels]), **KWARGS)
    assert rows.mean().item() == pytest.approx(expected, rel=1e-12)
    alone = {**KWARGS, "alpha": 1.0}  # KL and hint only: the labels do not matter
    torch.testing.assert_close(
        byot_loss(exits, features, final, final_features, labels, **alone, reduction="none"),
        byot_loss(
            exits, features, final, final_features, labels.clamp(min=0), **alone, reduction="none"
        ),
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"exit_features": []}, "exit_features must be a non-empty list"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"hint_weight": -1.0}, "hint_weight must be >= 0"),
        ({"reduction": "mean"}, "reduction must be one of"),
    ],
)
def test_bad_arguments_are_refused_by_name(change: dict, match: str) -> None:
    exits, features, final, final_features, labels = _inputs()
    arguments = {"exit_logits": exits, "exit_features": features, **KWARGS, **change}
    with pytest.raises((ValueError, TypeError), match=match):
        byot_loss(final_features=final_features, final_logits=final, labels=labels, **arguments)


TAPS = ["exit1", "exit2", "exit1.bottleneck", "exit2.bottleneck", "flatten"]


def test_the_student_is_its_own_teacher_through_its_taps() -> None:
    torch.manual_seed(0)
    model = CNN1DExits(width=4).double()
    term = Term("byot", "byot", loss_kwargs=KWARGS, student=TAPS)
    distiller = Distiller(model, None, [term])
    batch = {"inputs": torch.randn(6, 1, 40, dtype=torch.float64), "labels": torch.arange(6) % 10}
    distiller.build(batch)
    value = distiller(batch).terms["byot"]
    inputs = batch["inputs"]
    first = model.conv1(inputs)
    second = model.conv2(first)
    deepest = model.flatten(model.conv3(second))
    expected = byot_loss(
        [model.exit1(first), model.exit2(second)],
        [model.exit1.bottleneck(first), model.exit2.bottleneck(second)],
        model.head(deepest),
        deepest,
        batch["labels"],
        **KWARGS,
    )
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize(
    ("student", "teacher", "match"),
    [
        (TAPS[:4], "logits", "student must list 2K \\+ 1 tap paths"),
        ("exit1", "logits", "student must be a non-empty list of paths"),
        (TAPS, "conv1", "leave teacher as 'logits'"),
    ],
)
def test_bad_taps_are_refused(student, teacher, match: str) -> None:
    term = Term("byot", "byot", student=student, teacher=teacher)
    with pytest.raises(ValueError, match=match):
        Distiller(CNN1DExits(width=4), None, [term]).build(
            {"inputs": torch.randn(2, 1, 40), "labels": torch.tensor([0, 1])}
        )
