"""The search space: sampling a trial's values from ``tune.space`` and turning them into
``key=value`` recipe overrides; the grid of the grid sampler; checking the space against the
recipe up front."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import optuna
import yaml

from torchkd.config import ConfigError, Recipe, SearchParam, recipe_from_dict

__all__ = ["check_space", "grid_points", "suggest_params", "trial_overrides"]


def _yaml_scalar(value: Any) -> str:
    """``value`` written as a YAML scalar that reads back as the same value (``1.0e-05``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides that apply sampled ``params`` to a recipe.

    Example:
        >>> trial_overrides({"train.optimizer.lr": 1e-05, "terms.0.loss_kwargs.alpha": 0.5})
        ['train.optimizer.lr=1.0e-05', 'terms.0.loss_kwargs.alpha=0.5']
    """
    return [f"{path}={_yaml_scalar(value)}" for path, value in params.items()]


def suggest_params(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Ask ``trial`` for one value per entry of ``space``; returns ``{path: value}``."""
    params: dict[str, Any] = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            params[path] = trial.suggest_categorical(path, spec.choices)
        elif spec.type == "int":
            step = int(spec.step or 1)
            params[path] = trial.suggest_int(
                path, int(spec.low), int(spec.high), step=step, log=spec.log
            )
        else:
            params[path] = trial.suggest_float(
                path, spec.low, spec.high, step=spec.step, log=spec.log
            )
    return params


def _grid_values(path: str, spec: SearchParam) -> list[Any]:
    if spec.grid is not None:
        return list(spec.grid)
    if spec.type == "categorical":
        return list(spec.choices or [])
    if spec.type == "int":
        return list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
    if spec.step is None:
        raise ConfigError(
            [
                f"tune.space.{path}: the grid sampler needs the values to try: give "
                "`grid: [...]` or a `step`"
            ]
        )
    count = math.floor((spec.high - spec.low) / spec.step + 1e-9) + 1
    return [round(spec.low + index * spec.step, 12) for index in range(count)]


def grid_points(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """Every combination of the entries' grid values, in a fixed order (the first key slowest).

    Example:
        >>> from torchkd.config import SearchParam
        >>> space = {"a": SearchParam(type="int", low=1, high=2),
        ...          "b": SearchParam(type="float", low=0, high=1, grid=[0.5, 1.0])}
        >>> grid_points(space)
        [{'a': 1, 'b': 0.5}, {'a': 1, 'b': 1.0}, {'a': 2, 'b': 0.5}, {'a': 2, 'b': 1.0}]
    """
    names = list(space)
    values = [_grid_values(name, space[name]) for name in names]
    combinations = itertools.product(*values)
    return [dict(zip(names, combination, strict=True)) for combination in combinations]


def check_space(raw: dict[str, Any], overrides: Sequence[str], recipe: Recipe) -> None:
    """Apply each entry's lowest value (or first choice) once, so a bad path fails up front.

    The recipe is validated and its loss terms are built (a misspelt ``loss_kwargs`` key is
    only caught by the loss itself).
    """
    from torchkd.config import build_terms

    assert recipe.tune is not None
    for path, spec in recipe.tune.space.items():
        if path.startswith("tune."):
            raise ConfigError([f"tune.space.{path}: the search cannot change the tune: section"])
        value = spec.choices[0] if spec.type == "categorical" else spec.low
        try:
            build_terms(recipe_from_dict(raw, [*overrides, *trial_overrides({path: value})]))
        except ConfigError as error:
            problems = [f"tune.space.{path}: {problem}" for problem in error.problems]
            raise ConfigError(problems) from None


# ------------------------------------------------------------------------------- the study
