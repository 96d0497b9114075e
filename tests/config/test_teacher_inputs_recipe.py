"""``data.teacher_inputs``: the recipe key of cross-modal distillation, checked by the schema
and passed to the Distiller."""

from __future__ import annotations

import pytest

from torchkd.config import ConfigError, build_distiller, recipe_from_dict


def recipe(**changes: object) -> dict:
    base = {
        "name": "crossmodal",
        "data": {"dataset": "digits", "teacher_inputs": "teacher_inputs"},
        "teacher": {"model": "mlp", "untrained": True},
        "student": {"model": "mlp"},
        "terms": [{"name": "kd", "loss": "kd"}],
    }
    return {**base, **changes}


def test_the_distiller_reads_the_teachers_entry() -> None:
    distiller = build_distiller(recipe_from_dict(recipe()))
    assert (distiller.inputs_key, distiller.teacher_inputs_key) == ("inputs", "teacher_inputs")
    plain = recipe(data={"dataset": "digits"})
    assert build_distiller(recipe_from_dict(plain)).teacher_inputs_key == "inputs"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher": None}, "data.teacher_inputs: names the batch entry the teachers read"),
        ({"on_policy": {"fraction": 0.5, "max_new_tokens": 2}}, "on_policy, data.teacher_inputs"),
        ({"generations": 2}, "drop data.teacher_inputs"),
    ],
)
def test_contradictions_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(recipe(**changes))
