"""fixed_temperature: the temperature a term computes at is the one the Distiller's loss call
uses (the term's, its loss_kwargs', or the loss's default), and what has none is refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from torchkd import losses
from torchkd.distiller import Distiller
from torchkd.schedules import Linear
from torchkd.terms import Term, TermError, fixed_temperature

CLASSES = 5


def term_forms(name: str) -> list[tuple[Term, tuple[float, str]]]:
    """A term of loss ``name`` by each source of its temperature, with the expected answer."""
    default = losses.create(name).temperature
    return [
        (Term(name, name, temperature=2.5), (2.5, "temperature")),
        (Term(name, name, loss_kwargs={"temperature": 3}), (3.0, "loss_kwargs.temperature")),
        (Term(name, name), (float(default), "temperature")),
    ]


@pytest.mark.parametrize("name", ["kd", "ls_kd", "dist"])
@pytest.mark.parametrize("form", range(3))
def test_the_fixed_temperature_is_the_one_the_distiller_computes_at(name: str, form: int) -> None:
    term, expected = term_forms(name)[form]
    assert fixed_temperature(term) == expected
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, CLASSES), nn.Linear(4, CLASSES)
    batch: dict[str, Any] = {"inputs": torch.randn(6, 4)}
    distiller = Distiller(student, teacher, [term])
    distiller.build(batch)
    value = distiller(batch).terms[name]
    with torch.no_grad():
        teacher_logits = teacher(batch["inputs"])
    reference = losses.create(name)(
        student(batch["inputs"]), teacher_logits, temperature=fixed_temperature(term)[0]
    )
    torch.testing.assert_close(value, reference)


def test_a_loss_without_a_temperature_argument_computes_at_one() -> None:
    assert fixed_temperature(Term("hint", "hint", student="a", teacher="b")) == (1.0, "temperature")


@pytest.mark.parametrize(
    "term",
    [Term("kd", "kd", temperature=Linear(1.0, 4.0)), Term("kd", "kd", temperature="learned")],
)
def test_a_varying_temperature_has_no_fixed_value(term: Term) -> None:
    with pytest.raises(TermError, match="is not a fixed number") as raised:
        fixed_temperature(term)
    assert raised.value.field == "temperature"


def test_a_loss_module_keeps_its_temperature_its_own() -> None:
    with pytest.raises(TermError, match=r"give Term\.temperature") as raised:
        fixed_temperature(Term("mine", nn.MSELoss(), signature="logits"))
    assert raised.value.field == "loss"
