"""Feature terms between layers: taps that cannot be compared are blamed on the taps (not on the
loss's arguments), and every automatic adapter built is reported with its layers and size."""

from __future__ import annotations

import pytest

from torchkd.config import ConfigError, build_from_recipe, check_built, recipe_from_dict
from torchkd.config.run import adapter_lines

RAW = {
    "name": "taps",
    "data": {"dataset": "digits", "batch_size": 32},
    "teacher": {"model": "digits_cnn", "kwargs": {"width": 8}, "untrained": True},
    "student": {"model": "digits_cnn", "kwargs": {"width": 4}},
    "terms": [
        {"name": "kd", "loss": "kd"},
        {"name": "hint", "loss": "hint", "student": "conv2", "teacher": "conv2", "weight": 0.1},
    ],
}


def test_taps_of_different_ranks_are_blamed_on_the_taps() -> None:
    recipe = recipe_from_dict(RAW, ["terms.1.teacher=head"])
    built = build_from_recipe(recipe, splits=["train", "val"])
    with pytest.raises(ConfigError) as caught:
        check_built(built, recipe)
    (problem,) = caught.value.problems
    assert problem.startswith("terms.1.student: term 'hint': student tap 'conv2' and teacher tap")
    assert "'head': cannot adapt tensors of different ranks" in problem


def test_each_automatic_adapter_is_reported_with_its_layers_and_parameters() -> None:
    recipe = recipe_from_dict(RAW)
    built = build_from_recipe(recipe, splits=["train", "val"])
    check_built(built, recipe)
    # student conv2 [B, 8, 4, 4] -> teacher conv2 [B, 16, 4, 4]: a 1x1 conv (8·16) + BatchNorm
    (line,) = adapter_lines(built, recipe)
    assert line.startswith("terms.1 (hint): adapter conv2 -> conv2: Conv2d(8, 16, kernel_size=")
    assert "BatchNorm2d(16" in line and line.endswith(f"{8 * 16 + 2 * 16:,} parameters")
