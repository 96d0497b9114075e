"""One registry mechanism for every named thing torchkd builds: losses, models, datasets,
schedules (and any registry added later).

A :class:`Registry` maps names to entries. Entries are registered at their definition with the
:meth:`Registry.register` decorator; :meth:`Registry.entry` looks one up and answers an unknown
name with the closest registered names; :meth:`Registry.available` lists them. Each registry
module keeps its public names (``losses.create``, ``models.create_model``, ...) as thin
functions over one :class:`Registry`.

Example:
    >>> colors = Registry("color")
    >>> @colors.register("red")
    ... def red() -> str:
    ...     return "#f00"
    >>> colors.entry("red")()
    '#f00'
    >>> colors.entry("rde")
    Traceback (most recent call last):
    ...
    KeyError: "unknown color 'rde'; did you mean 'red'? (available: red)"
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry", "closest", "import_reference"]

EntryT = TypeVar("EntryT")
ObjectT = TypeVar("ObjectT")


def closest(name: str, options: Iterable[str], cutoff: float = 0.5, limit: int = 3) -> list[str]:
    """The registered or allowed names closest to ``name`` (the one "did you mean" helper).

    Example:
        >>> closest("temprature", ["temperature", "alpha"])
        ['temperature']
    """
    return difflib.get_close_matches(name, list(options), n=limit, cutoff=cutoff)


def did_you_mean(name: str, options: Iterable[str], cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the closest options, or ``""`` when none is close."""
    close = closest(name, options, cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _maybe(name: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``options``, or ``""``."""
    close = closest(name, options, cutoff=0.6, limit=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def import_reference(reference: str) -> object:
    """The object ``"package.module:attribute"`` names, imported from ``sys.path``.

    Recipes load with their own directory and the working directory at the front of
    ``sys.path`` (:func:`torchkd.config.load_recipe`), so ``mypkg.models:MyNet`` finds
    ``mypkg/`` beside the recipe or where the command runs.

    Raises:
        KeyError: a malformed reference, a module that does not exist, or a missing attribute,
            with the closest names that do exist. (An error raised while the module itself
            runs, including a missing import inside it, is left as it is.)

    Example:
        >>> import_reference("collections:OrderedDict").__name__
        'OrderedDict'
        >>> import_reference("collections:OrderDict")
        Traceback (most recent call last):
        ...
        KeyError: "module 'collections' has no attribute 'OrderDict' (did you mean 'OrderedDict'?)"
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise KeyError(f"expected 'package.module:attribute', got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if not (module_name == missing or module_name.startswith(f"{missing}.")):
            raise  # the module exists but imports something that does not
        parent, _, _ = missing.rpartition(".")
        search = getattr(sys.modules.get(parent), "__path__", []) if parent else None
        found = [
            f"{parent}.{info.name}" if parent else info.name
            for info in pkgutil.iter_modules(search)
        ]
        raise KeyError(f"no module {missing!r}{_maybe(missing, found)}") from None
    if not hasattr(module, attribute):
        names = [name for name in vars(module) if not name.startswith("_")]
        raise KeyError(
            f"module {module_name!r} has no attribute {attribute!r}{_maybe(attribute, names)}"
        )
    return getattr(module, attribute)


class Registry(Generic[EntryT]):
    """Names -> entries of one kind (``kind`` names it in error messages).

    Args:
        kind: what the entries are, e.g. ``"loss"``, used in ``"unknown loss 'x'"``.
        wrap: turns a decorated object and the decorator's keyword arguments into the stored
            entry (default: the object itself; the loss registry stores a record).
    """

    def __init__(self, kind: str, wrap: Callable[..., EntryT] | None = None) -> None:
        self.kind = kind
        self._wrap = wrap
        self._entries: dict[str, EntryT] = {}

    def register(self, name: str, **details: object) -> Callable[[ObjectT], ObjectT]:
        """Decorator: register the decorated object under ``name`` (twice is an error)."""

        def decorate(obj: ObjectT) -> ObjectT:
            self.add(name, obj, **details)
            return obj

        return decorate

    def add(self, name: str, obj: object, **details: object) -> EntryT:
        """Register ``obj`` under ``name`` without a decorator (for objects built in code)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if self._wrap is None:
            if details:
                raise TypeError(f"the {self.kind} registry takes no details, got {sorted(details)}")
            entry = obj
        else:
            entry = self._wrap(name, obj, **details)
        self._entries[name] = entry  # type: ignore[assignment]
        return entry  # type: ignore[return-value]

    def entry(self, name: str) -> EntryT:
        """The entry registered under ``name``; an unknown name raises ``KeyError`` with the
        closest names and the full list."""
        if not isinstance(name, str) or name not in self._entries:
            hint = did_you_mean(name, self._entries) if isinstance(name, str) else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} (available: {', '.join(self.available())})"
            )
        return self._entries[name]

    def resolve(self, name: str) -> EntryT:
        """:meth:`entry` for a registered name; ``"package.module:attribute"`` (your own code)
        is imported instead (:func:`import_reference`)."""
        if isinstance(name, str) and ":" in name:
            return import_reference(name)  # type: ignore[return-value]
        return self.entry(name)

    def available(self, predicate: Callable[[EntryT], bool] | None = None) -> list[str]:
        """Sorted registered names, optionally only those whose entry passes ``predicate``."""
        return sorted(n for n, e in self._entries.items() if predicate is None or predicate(e))

    def values(self) -> list[EntryT]:
        """The entries in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names in registration order."""
        return iter(self._entries)
