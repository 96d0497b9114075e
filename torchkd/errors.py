"""The one kind of error that refuses input: :class:`InputError`.

Every refusal of what a user gave -- a damaged or mismatched file, a bad recipe value, a bad
command-line option -- is an :class:`InputError` (or a subclass: ``ConfigError``,
``CheckpointError``, ``UsageError``, ...). Its message says everything: the file or YAML path
at fault, what was given and what was expected. The command line prints that message alone
(no class name, no traceback) and exits 2; any other exception is a failure while running
(exit 1).
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(Exception):
    """A refusal of input; the message names the file or YAML path, what was given and what
    was expected."""
