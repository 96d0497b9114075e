"""The check of a recipe's keyword arguments against the function they go to."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torchkd._registry import did_you_mean
from torchkd.config.errors import ConfigError

__all__ = ["check_arguments"]


def check_arguments(factory: Callable[..., Any], kwargs: dict[str, Any], path: str) -> None:
    """Refuse keyword arguments ``factory`` does not take, naming each one's YAML path and the
    closest accepted name."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name != "self"]
    problems = [
        f"{path}.{key}: unknown argument of {getattr(factory, '__name__', factory)}"
        f"{did_you_mean(key, accepted)} (it takes {', '.join(accepted) or 'no arguments'})"
        for key in kwargs
        if key not in accepted
    ]
    if problems:
        raise ConfigError(problems)
