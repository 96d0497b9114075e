"""The ``torchkd`` command line: ``demo``, ``train``, ``eval``, ``export``, ``list``, ``tune``,
``select-teacher``, ``cache-teacher``, ``serve-teacher``.

Each subcommand is one :class:`Command` (a function that adds its arguments and a function that
runs it) passed to :func:`register`; :func:`main` builds the parser from the registered commands.
A new command goes in a module of this package, imported below.

Recipe overrides (``key=value``) may come anywhere after the recipe, before or after options,
and ``--traceback`` anywhere: ``torchkd tune R --trials 4 train.epochs=4 --traceback``.

Exit codes: 0 success, 2 bad usage, an invalid recipe (the message names the YAML path, no
traceback) or a damaged checkpoint, 1 a failure while running (``--traceback`` shows where),
130 interrupted. Usage errors print the subcommand's usage line.
"""

from __future__ import annotations

# registers the commands, in this order
from torchkd.cli import demo, runs, search  # noqa: F401  # isort: skip
from torchkd.cli import cache, serve  # noqa: F401  # isort: skip
from torchkd.cli.base import (
    COMMANDS,
    Command,
    UsageError,
    build_parser,
    entry_point,
    main,
    register,
)

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "entry_point", "main", "register"]
