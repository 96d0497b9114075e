"""``key=value`` overrides of a parsed recipe, checked against the schema as they are set."""

from __future__ import annotations

import copy
import typing
from collections.abc import Sequence
from typing import Any

import yaml

from torchkd.config.errors import ConfigError, child_schema, describe, is_model, path_text, suggest
from torchkd.config.schema import Recipe

__all__ = ["apply_overrides"]


def _split_override(override: str) -> tuple[list[str | int], Any]:
    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise ConfigError([f"override {override!r}: expected key=value (e.g. train.epochs=5)"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"override {override!r}: value is not valid YAML ({error})"]) from None
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    return parts, value


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, override: str) -> None:
    schema: Any = Recipe
    node: Any = data
    for position, part in enumerate(parts):
        here = path_text(parts[: position + 1])
        last = position == len(parts) - 1
        if is_model(schema):
            if str(part) not in schema.model_fields:
                prefix = path_text(parts[:position]) if position else ""
                hint = suggest(str(part), list(schema.model_fields), schema, prefix)
                raise ConfigError([f"override {override!r}: {here} is not a recipe key ({hint})"])
            part = str(part)
        if isinstance(node, dict):
            part = str(part)
        elif isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise ConfigError(
                    [
                        f"override {override!r}: {here}: no such list entry (the list has "
                        f"{len(node)} entries, indexed from 0)"
                    ]
                )
        else:
            parent = path_text(parts[:position])
            raise ConfigError(
                [f"override {override!r}: {parent} is {describe(node)}, not a mapping"]
            )
        schema = child_schema(schema, part)
        if last:
            node[part] = value
        elif isinstance(node, dict) and node.get(part) is None:
            node[part] = [] if typing.get_origin(schema) is list else {}
            node = node[part]
        else:
            node = node[part]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``"dotted.path=value"`` applied (value parsed as YAML).

    Paths follow the schema: a key that no section defines is an error naming it, list entries
    are addressed by index (``terms.0.weight=0.5``) and must exist, free-form mappings
    (``kwargs``, ``loss_kwargs``) accept new keys.

    Example:
        >>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=5", "train.amp=bf16"])
        {'train': {'epochs': 5, 'amp': 'bf16'}}
    """
    copied = copy.deepcopy(data)
    for override in overrides:
        parts, value = _split_override(override)
        _set_path(copied, parts, value, override)
    return copied
