"""The command line's machinery: :class:`Command` and its registry, the helpers commands share,
the parser built from the registered commands, and :func:`main` (exit codes, errors).

Recipe overrides (``key=value``) may come anywhere after the recipe, before or after options,
and ``--traceback`` anywhere: ``torchkd tune R --trials 4 train.epochs=4 --traceback``.

Exit codes: 0 success, 2 a refusal of input (:class:`~torchkd.errors.InputError`: bad usage,
an invalid recipe, a damaged or mismatched file; the message alone, naming the YAML path or
the file, no traceback), 1 a failure while running (``--traceback`` shows where), 130
interrupted. Refusals print the subcommand's usage line; under ``torchrun`` rank 0 alone
prints them (every process refuses together, see :mod:`torchkd.train.refusal`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from torchkd._registry import Registry
from torchkd.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from torchkd.config import Recipe

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main", "register"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# a recipe override: a dotted path of names or list indices, "=", a YAML value
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


class UsageError(InputError):
    """Bad command-line usage: a missing file, a bad option value (exit code 2)."""


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        name: what the user types (``torchkd NAME``).
        summary: one line for ``torchkd --help``.
        examples: example invocations, shown at the end of ``torchkd NAME --help``.
        add_arguments: adds the subcommand's arguments to its parser.
        run: runs it with the parsed arguments; returns the exit code.
        description: longer text for ``torchkd NAME --help`` (default: ``summary``).
    """

    name: str
    summary: str
    examples: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


COMMANDS: Registry[Command] = Registry("command")


def register(command: Command) -> Command:
    """Add ``command`` to the CLI (names are unique); returns it."""
    return COMMANDS.add(command.name, command)


# ---------------------------------------------------------------------------------- helpers


def existing_file(path: str, what: str) -> Path:
    resolved = Path(path)
    if not resolved.is_file():
        raise UsageError(f"{what} {path!r} does not exist (or is not a file)")
    return resolved


def existing_checkpoint(path: str) -> Path:
    """``--checkpoint PATH``: a file, or an FSDP run's sharded ``name.dcp/`` (also named as
    ``name.pt`` when only the directory exists)."""
    from torchkd.train.checkpoint_layout import sharded_path

    resolved = Path(path)
    for candidate in (resolved, sharded_path(resolved)):
        if candidate.is_dir() and (candidate / ".metadata").is_file():
            return candidate
    return existing_file(path, "--checkpoint")


def load_recipe(path: str, overrides: Sequence[str] = ()) -> Recipe:
    from torchkd.config import load_recipe

    return load_recipe(existing_file(path, "recipe"), overrides)


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the YAML recipe")


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="recipe overrides by dotted path, values parsed as YAML, anywhere after the "
        "recipe (e.g. train.epochs=5 terms.0.loss_kwargs.temperature=8)",
    )


def is_override(token: str) -> bool:
    """Whether a command-line word is a ``key=value`` recipe override (and not a file)."""
    return _OVERRIDE.match(token) is not None and not Path(token).exists()


class PathsAndOverrides(argparse.Action):
    """An ``nargs="+"`` option of paths that leaves ``key=value`` words to the overrides, so
    ``--candidates a.pt b.pt train.epochs=5`` overrides the recipe."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        paths = [value for value in values if not is_override(value)]
        if not paths:
            parser.error(f"argument {option_string}: expected at least one path")
        setattr(namespace, self.dest, paths)
        overrides = [value for value in values if is_override(value)]
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *overrides]


def student_from_checkpoint(recipe: Recipe, checkpoint: str, role: str = "student") -> nn.Module:
    """The recipe's student (or, with ``role="teacher"``, its teacher), in eval mode, holding
    the student weights of ``checkpoint`` (a teacher's own training run stores it as its
    student)."""
    from torchkd.config import ModelConfig, build_model
    from torchkd.train import CheckpointError, load_student_weights

    path = existing_checkpoint(checkpoint)
    spec = recipe.student if role == "student" else recipe.teacher
    if not isinstance(spec, ModelConfig):
        raise UsageError(f"--model {role}: the recipe has no single `{role}:` to build")
    model = build_model(spec.model_copy(update={"checkpoint": None}), role)
    try:
        state = load_student_weights(path)
    except CheckpointError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(
            f"--checkpoint {checkpoint} does not fit the recipe's {role} "
            f"({spec.model} {spec.kwargs}): {error}"
        ) from None
    return model.eval()


def print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
        return
    width = max(len(key) for key in metrics)
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


# ------------------------------------------------------------------------------------ parser


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``torchkd`` parser and its subparsers by command name."""
    parser = argparse.ArgumentParser(
        prog="torchkd",
        description="Knowledge distillation for PyTorch: train, evaluate and export students "
        "from YAML recipes, or run the built-in MNIST-1D demo.",
        epilog="Run `torchkd COMMAND --help` for a command's options and examples.",
    )
    traceback_help = "show the full traceback when a command fails"
    parser.add_argument("--traceback", action="store_true", help=traceback_help)
    from torchkd import __version__

    parser.add_argument("--version", action="version", version=f"torchkd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    by_name = {}
    for command in COMMANDS.values():
        subparser = subparsers.add_parser(
            command.name,
            help=command.summary,
            description=command.description or command.summary,
            epilog="examples:\n" + "\n".join(f"  {line}" for line in command.examples.splitlines()),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        # SUPPRESS: given before the command, it is not reset by the subcommand's default
        subparser.add_argument(
            "--traceback", action="store_true", default=argparse.SUPPRESS, help=traceback_help
        )
        subparser.set_defaults(run=command.run)
        by_name[command.name] = subparser
    return parser, by_name


def build_parser() -> argparse.ArgumentParser:
    """The ``torchkd`` parser with one subparser per registered :class:`Command`."""
    return _build_parsers()[0]


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    """Parse ``argv``; ``key=value`` words after options join the overrides.

    Raises:
        SystemExit: ``--help``, ``--version`` or a usage error (printed with the usage line of
            the subcommand).
    """
    parser, subparsers = _build_parsers()
    args, extras = parser.parse_known_args(argv)
    subparser = subparsers[args.command]
    takes_overrides = hasattr(args, "overrides")
    recipe = getattr(args, "recipe", None)
    if recipe is not None and is_override(recipe):
        subparser.error(f"the recipe comes first, then key=value overrides; got {recipe!r}")
    unknown = [word for word in extras if not (takes_overrides and is_override(word))]
    if unknown:
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = [*args.overrides, *extras]
    return args, subparser


def entry_point() -> NoReturn:
    """The ``torchkd`` program (script and ``python -m torchkd``): exit with :func:`main`'s
    code (under a process group through :func:`~torchkd.train.distributed.end_process`)."""
    from torchkd.train.distributed import end_process

    end_process(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchkd`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 runtime failure, 2 a refusal of input (bad usage, invalid
        recipe, damaged or mismatched file).
    """
    from torchkd.train.distributed import is_main_process, process_description, record_failure

    try:
        args, subparser = _parse(argv)
    except SystemExit as exit_request:  # --help, --version, argparse usage errors
        return int(exit_request.code or 0)
    show_traceback = args.traceback or os.environ.get("TORCHKD_TRACEBACK") == "1"
    try:
        return args.run(args)
    except InputError as error:
        if is_main_process():
            print(subparser.format_usage().rstrip(), file=sys.stderr)
            print(f"torchkd {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"torchkd {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`torchkd list losses | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as error:
        if show_traceback:
            traceback.print_exc()
        where = process_description()
        print(
            f"torchkd {args.command}: failed{where}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        record_failure(error)  # under torchrun: the root cause torchrun reports
        if not show_traceback:
            print("(rerun with `torchkd --traceback ...` to see where)", file=sys.stderr)
        return EXIT_FAILURE
