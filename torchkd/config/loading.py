"""Reading recipes: YAML (``yaml.safe_load``) -> overrides -> validated :class:`Recipe`, and
writing the resolved recipe of a run."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from torchkd.config.errors import ConfigError, describe, format_errors
from torchkd.config.overrides import apply_overrides
from torchkd.config.schema import Recipe

__all__ = [
    "add_import_roots",
    "load_raw_recipe",
    "load_recipe",
    "recipe_from_dict",
    "write_resolved_config",
]


def recipe_from_dict(data: Any, overrides: Sequence[str] = (), source: str | None = None) -> Recipe:
    """Validate ``data`` (a parsed YAML mapping) after applying ``overrides``.

    Raises:
        ConfigError: listing every problem with its YAML path.

    Example:
        >>> raw = {"name": "x", "data": {"dataset": "digits"}, "student": {"model": "mlp"},
        ...        "terms": [{"name": "ce", "loss": "ce"}]}
        >>> recipe_from_dict(raw, ["train.epochs=3"]).train.epochs
        3
        >>> recipe_from_dict(raw, ["train.optimizer.lr=abc"])
        Traceback (most recent call last):
        ...
        torchkd.config.errors.ConfigError: invalid recipe:
          train.optimizer.lr: expected a number, got 'abc'
    """
    if not isinstance(data, dict):
        raise ConfigError([f"<recipe>: expected a mapping at the top level, got {describe(data)}"])
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = format_errors(error.errors(), data)
        raise ConfigError(problems, source) from None


def load_raw_recipe(path: str | Path) -> dict[str, Any]:
    """The parsed YAML mapping of a recipe file (``yaml.safe_load``), not yet validated.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the YAML does not parse or is not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([f"<recipe>: not valid YAML ({error})"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [f"<recipe>: expected a mapping at the top level, got {describe(data)}"], str(path)
        )
    return data


def add_import_roots(recipe_path: str | Path) -> list[str]:
    """Put the recipe file's directory, then the working directory, first on ``sys.path``.

    This is where ``package.module:attribute`` references of a recipe (``model:``,
    ``data.dataset``) are imported from: ``mypkg/`` beside the recipe, else in the directory
    the command runs in, else any installed package. Returns the two directories, in order.
    """
    roots = [str(Path(recipe_path).resolve().parent), str(Path.cwd())]
    for root in reversed(roots):
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
    importlib.invalidate_caches()  # a package written since the last import is found
    return roots


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (:func:`load_raw_recipe`), apply ``key=value`` overrides, validate;
    its ``package.module:attribute`` references then import from the recipe's directory and the
    working directory (:func:`add_import_roots`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the YAML does not parse or does not match the schema; the message names
            the file and each offending YAML path.
    """
    data = load_raw_recipe(path)
    add_import_roots(path)
    try:
        return recipe_from_dict(data, overrides, str(path))
    except ConfigError as error:
        raise ConfigError(error.problems, str(path)) from None


def write_resolved_config(recipe: Recipe | dict[str, Any], run_dir: str | Path) -> Path:
    """Write the validated recipe (defaults filled in) to ``run_dir/config.yaml``."""
    data = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
