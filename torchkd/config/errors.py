"""Recipe errors: :class:`ConfigError` and the translation of pydantic's validation errors
into one ``"yaml.path: what was expected"`` line per problem."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

from pydantic import BaseModel, Tag

from torchkd._registry import closest
from torchkd.errors import InputError

__all__ = [
    "ConfigError",
    "blame",
    "child_schema",
    "describe",
    "format_errors",
    "is_model",
    "path_text",
    "schema_at",
    "suggest",
]


class ConfigError(InputError, ValueError):
    """A recipe problem; ``problems`` lists one ``"yaml.path: what was expected"`` per issue."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        header = f"invalid recipe {source}:" if source else "invalid recipe:"
        super().__init__("\n  ".join([header, *self.problems]))


def path_text(parts: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in parts) or "<recipe>"


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``None`` from ``annotation``; keep real unions as they are."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def child_schema(schema: Any, key: str | int) -> Any:
    """The annotation one step below ``schema`` (a model class, a list, or free-form)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _unwrap(schema.model_fields[str(key)].annotation)
    if typing.get_origin(schema) is list:
        return _unwrap(typing.get_args(schema)[0])
    return Any


def is_model(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def suggest(key: str, options: Sequence[str], schema: Any = None, prefix: str = "") -> str:
    """The hint for an unknown ``key`` among ``options``: the closest option, else (given the
    section's ``schema`` and its dotted ``prefix``) a key of that name in a nested section
    (``train.lr`` -> ``train.optimizer.lr``), else the options."""
    close = closest(key, options, cutoff=0.6, limit=1)
    if close:
        return f"did you mean {close[0]!r}?"
    nested = _nested_keys(schema, key, prefix) if schema is not None else []
    if nested:
        return f"did you mean {' or '.join(repr(path) for path in nested)}?"
    return f"expected one of: {', '.join(options)}"


def _nested_keys(schema: Any, key: str, prefix: str, depth: int = 2) -> list[str]:
    """Dotted paths below ``schema`` (sections only, ``depth`` levels) whose last key is ``key``."""
    if depth == 0 or not is_model(schema):
        return []
    found = []
    for name, field in schema.model_fields.items():
        child = _unwrap(field.annotation)
        if not is_model(child):
            continue
        path = f"{prefix}.{name}" if prefix else name
        if key in child.model_fields:
            found.append(f"{path}.{key}")
        found += _nested_keys(child, key, path, depth - 1)
    return found


def schema_at(parts: Sequence[str | int]) -> Any:
    from torchkd.config.schema import Recipe

    schema: Any = Recipe
    for part in parts:
        if is_model(schema) and str(part) not in schema.model_fields:
            return Any
        schema = child_schema(schema, part)
    return schema


def _clean_location(location: tuple[Any, ...], data: Any, error_type: str) -> list[str | int]:
    """Drop pydantic's union tags from ``location`` by following it through the raw ``data``."""
    cleaned: list[str | int] = []
    node = data
    for position, part in enumerate(location):
        last = position == len(location) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif last and error_type == "missing":
            node = None
        else:
            continue
        cleaned.append(part)
    return cleaned


def _tagged_member(schema: Any, location: tuple[Any, ...]) -> Any:
    """The member of the tagged union ``schema`` (e.g. ``teacher:``, a model or a server)
    that pydantic validated, whose tag is in the error's raw ``location``; ``schema`` itself
    when it is no tagged union."""
    if typing.get_origin(schema) not in (typing.Union, types.UnionType):
        return schema
    for member in typing.get_args(schema):
        tags = [item.tag for item in getattr(member, "__metadata__", ()) if isinstance(item, Tag)]
        if tags and tags[0] in location:
            return _unwrap(member)
    return schema


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_NAMES_ITS_KEY = re.compile(r"^\w+(, \w+)*: ")
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_EXPECTATIONS = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
}


def _format_error(error: Any, data: Any) -> str:
    error_type = error["type"]
    parts = _clean_location(error["loc"], data, error_type)
    where = path_text(parts)
    if error_type == "extra_forbidden":
        schema = _tagged_member(schema_at(parts[:-1]), error["loc"])
        options = list(schema.model_fields) if is_model(schema) else []
        prefix = path_text(parts[:-1]) if len(parts) > 1 else ""
        hint = suggest(str(parts[-1]), options, schema, prefix)
        return f"{where}: unknown key ({hint})"
    if error_type == "missing":
        return f"{where}: required key missing"
    given = f", got {describe(error['input'])}"
    if error_type == "value_error":
        message = str(error["ctx"]["error"])
        if message.startswith("expected"):
            return f"{where}: {message}"
        if parts and _NAMES_ITS_KEY.match(message):
            return f"{where}.{message}"  # a section validator's "milestones: ..." message
        return f"{where}: {message}"
    if error_type == "literal_error":
        hint = ""
        if isinstance(error["input"], str):
            allowed = [value.strip("'") for value in error["ctx"]["expected"].split("'")[1::2]]
            close = closest(error["input"], allowed, cutoff=0.6, limit=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: expected one of {error['ctx']['expected']}{given}{hint}"
    expectation = _EXPECTATIONS.get(error_type)
    if error_type in _BOUNDS:
        expectation = error["msg"].replace("Input should be", "expected a value", 1)
    elif expectation is None:
        expectation = error["msg"].replace("Input should be", "expected", 1)
        expectation = expectation.replace("String should match pattern", "expected a match of")
    return f"{where}: {expectation}{given}"


def _top_level_message(error: Any, data: Any) -> str:
    if error["type"] == "value_error" and not error["loc"]:
        return str(error["ctx"]["error"])
    return _format_error(error, data)


def format_errors(errors: list[Any], data: Any) -> list[str]:
    """One message per pydantic error of validating ``data`` against the recipe schema."""
    return [_top_level_message(item, data) for item in errors]


@contextmanager
def blame(path: str) -> Iterator[None]:
    """Re-raise a registry or constructor error as a :class:`ConfigError` naming ``path``."""
    try:
        yield
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        if isinstance(error, ConfigError):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ConfigError([f"{path}: {message}"]) from error
