"""The recipe's ``on_policy:`` section: validation with YAML paths and building OnPolicy."""

from __future__ import annotations

import pytest
import yaml

from torchkd.config import ConfigError, build_on_policy, recipe_from_dict
from torchkd.on_policy import OnPolicy

RECIPE = """
name: gkd
data: {dataset: digits}
teacher: {model: mlp, kwargs: {in_features: 64, num_classes: 10}}
student: {model: mlp, kwargs: {in_features: 64, num_classes: 10}}
terms: [{name: kd, loss: kd}]
train: {seed: 7}
on_policy: {fraction: 0.5, max_new_tokens: 16, temperature: 0.8, top_k: 40, prompt_length: 8}
"""


def recipe_data() -> dict:
    return yaml.safe_load(RECIPE)


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        recipe_from_dict(data)
    return caught.value.problems


def test_the_section_builds_an_on_policy_seeded_by_the_run() -> None:
    recipe = recipe_from_dict(recipe_data())
    assert recipe.on_policy is not None
    built = build_on_policy(recipe.on_policy, recipe.train.seed)
    assert built == OnPolicy(
        fraction=0.5, max_new_tokens=16, temperature=0.8, top_k=40, prompt_length=8, seed=7
    )
    data = recipe_data()
    data["on_policy"].update(seed=3, source="teacher")
    recipe = recipe_from_dict(data)
    assert build_on_policy(recipe.on_policy, recipe.train.seed).seed == 3
    assert recipe.on_policy.source == "teacher"
    data = recipe_data()
    del data["on_policy"]
    assert recipe_from_dict(data).on_policy is None


def test_bad_sections_name_the_path() -> None:
    data = recipe_data()
    data["on_policy"].update(fraction=1.5, max_new_tokens=0, source="oracle")
    assert problems(data) == [
        "on_policy.fraction: expected a value less than or equal to 1, got 1.5",
        "on_policy.max_new_tokens: expected a value greater than 0, got 0",
        "on_policy.source: expected one of 'student' or 'teacher', got 'oracle'",
    ]
    data = recipe_data()
    data["on_policy"]["lambda"] = 0.5
    assert problems(data)[0].startswith("on_policy.lambda: unknown key")
    data = recipe_data()
    del data["teacher"]
    assert problems(data) == [
        "on_policy: on-policy distillation needs a teacher to score (or, with source: teacher, "
        "to generate) the sampled tokens; give teacher or teachers"
    ]
