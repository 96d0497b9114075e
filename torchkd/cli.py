"""The ``torchkd`` command line: ``demo``, ``train``, ``eval``, ``export``, ``tune``,
``select-teacher``, ``list``.

Each subcommand is one :class:`Command` (a function that adds its arguments and a function that
runs it) passed to :func:`register`; :func:`main` builds the parser from the registered commands.

Recipe overrides (``key=value``) may come anywhere after the recipe, before or after options,
and ``--traceback`` anywhere: ``torchkd tune R --trials 4 train.epochs=4 --traceback``.

Exit codes: 0 success, 2 bad usage, an invalid recipe (the message names the YAML path, no
traceback) or a damaged checkpoint, 1 a failure while running (``--traceback`` shows where),
130 interrupted. Usage errors print the subcommand's usage line.
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
from typing import TYPE_CHECKING, Any

from torchkd._registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from torchkd.config import Recipe

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main", "register"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# a recipe override: a dotted path of names or list indices, "=", a YAML value
_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


class UsageError(Exception):
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


def _existing_file(path: str, what: str) -> Path:
    resolved = Path(path)
    if not resolved.is_file():
        raise UsageError(f"{what} {path!r} does not exist (or is not a file)")
    return resolved


def _load_recipe(path: str, overrides: Sequence[str] = ()) -> Recipe:
    from torchkd.config import load_recipe

    return load_recipe(_existing_file(path, "recipe"), overrides)


def _add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="the YAML recipe")


def _add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="recipe overrides by dotted path, values parsed as YAML, anywhere after the "
        "recipe (e.g. train.epochs=5 terms.0.loss_kwargs.temperature=8)",
    )


def _is_override(token: str) -> bool:
    """Whether a command-line word is a ``key=value`` recipe override (and not a file)."""
    return _OVERRIDE.match(token) is not None and not Path(token).exists()


class _PathsAndOverrides(argparse.Action):
    """An ``nargs="+"`` option of paths that leaves ``key=value`` words to the overrides, so
    ``--candidates a.pt b.pt train.epochs=5`` overrides the recipe."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        paths = [value for value in values if not _is_override(value)]
        if not paths:
            parser.error(f"argument {option_string}: expected at least one path")
        setattr(namespace, self.dest, paths)
        overrides = [value for value in values if _is_override(value)]
        namespace.overrides = [*(getattr(namespace, "overrides", None) or []), *overrides]


def _student_from_checkpoint(recipe: Recipe, checkpoint: str) -> nn.Module:
    """The recipe's student (in eval mode) holding the student weights of ``checkpoint``."""
    from torchkd.config import build_model
    from torchkd.train import CheckpointError, load_student_weights

    path = _existing_file(checkpoint, "--checkpoint")
    student = build_model(recipe.student.model_copy(update={"checkpoint": None}), "student")
    try:
        state = load_student_weights(path)
    except CheckpointError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    try:
        student.load_state_dict(state)
    except RuntimeError as error:
        raise UsageError(
            f"--checkpoint {checkpoint} does not fit the recipe's student "
            f"({recipe.student.model} {recipe.student.kwargs}): {error}"
        ) from None
    return student.eval()


def _print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
        return
    width = max(len(key) for key in metrics)
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text}")


# ------------------------------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=_positive_int, default=3, help="seeds per arm (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps per run: a smoke test, not a result"
    )
    parser.add_argument(
        "--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)"
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="training processes in parallel (default: one per CPU core; 1 = in this process)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _demo(args: argparse.Namespace) -> int:
    from torchkd.demo import run_demo

    result = run_demo(seeds=args.seeds, quick=args.quick, out=args.out, workers=args.workers)
    print()
    print(result.table())
    print()
    print(f"wall time {result.seconds:.0f} s; report: {result.report_path}")
    return EXIT_OK


register(
    Command(
        name="demo",
        summary="distil a wide MNIST-1D CNN into a small student, with and without labels",
        description="Train (or reuse the cached) MNIST-1D teacher, then a student over seeds: "
        "on labels alone (baseline), with Hinton KD on the labeled set (a), and from the "
        "teacher's soft targets alone on unlabeled samples (b). Prints test top-1 per arm and "
        "the paired gain over the baseline, and writes OUT/report.md with plots.",
        examples="torchkd demo\ntorchkd demo --seeds 5 --out runs/demo5\ntorchkd demo --quick",
        add_arguments=_demo_arguments,
        run=_demo,
    )
)


# ------------------------------------------------------------------------------------ train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_argument(parser)
    _add_overrides_argument(parser)
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="where checkpoints, metrics.jsonl, TensorBoard events and report.md go "
        "(default: runs/<recipe name>)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from checkpoints/last.pt"
    )


def _train(args: argparse.Namespace) -> int:
    from torchkd.config import fit_recipe
    from torchkd.train.distributed import is_main_process

    recipe = _load_recipe(args.recipe, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    last = run_dir / "checkpoints" / "last.pt"
    sharded = last.with_suffix(".dcp")  # an FSDP run's (torchrun, train.distributed=fsdp)
    if args.resume and not (last.is_file() or sharded.is_dir()):
        raise UsageError(f"--resume: {last} does not exist (nothing to resume in {run_dir})")
    if not args.resume and (last.exists() or sharded.exists()):
        raise UsageError(
            f"{run_dir} already holds a run; pass --resume to continue it, or --run-dir DIR "
            "to start a new one"
        )
    for index, teacher in enumerate(recipe.teacher_configs):
        if teacher.checkpoint is None and is_main_process():
            print(
                f"torchkd train: warning: teacher {index} ({teacher.model}) has no checkpoint, "
                "so it distils its initial weights; set teacher.checkpoint=PATH",
                file=sys.stderr,
            )
    result = fit_recipe(recipe, run_dir, resume=args.resume)
    if not is_main_process():  # under torchrun, rank 0 reports
        return EXIT_OK
    best = result.best_metrics.get("top1")
    if best is not None:
        print(f"best validation top-1: {best:.2f} % (epoch {result.best_epoch})")
    if result.test_metrics and "top1" in result.test_metrics:
        print(f"test top-1 of the final model: {result.test_metrics['top1']:.2f} %")
    print(f"run directory: {result.run_dir}")
    if result.report_path is not None:
        print(f"report: {result.report_path}")
    return EXIT_OK


register(
    Command(
        name="train",
        summary="train a student from a YAML recipe",
        description="Train the recipe's student (with its teachers and loss terms) and write "
        "checkpoints, metrics.jsonl, TensorBoard events and report.md to the run directory.",
        examples="torchkd train configs/mnist1d/baseline.yaml\n"
        "torchkd train configs/mnist1d/kd.yaml teacher.checkpoint=teacher.safetensors "
        "terms.0.loss_kwargs.temperature=8\n"
        "torchkd train configs/mnist1d/kd.yaml --run-dir runs/kd --resume",
        add_arguments=_train_arguments,
        run=_train,
    )
)


# ------------------------------------------------------------------------------------- eval


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_argument(parser)
    _add_overrides_argument(parser)
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a training checkpoint (checkpoints/best.pt, last.pt) or exported .safetensors",
    )
    parser.add_argument("--split", choices=("val", "test"), default="test", help="default: test")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON line")


def _eval(args: argparse.Namespace) -> int:
    from torchkd.config import build_loaders
    from torchkd.distiller import Distiller, Term
    from torchkd.train import evaluate, resolve_device

    recipe = _load_recipe(args.recipe, args.overrides)
    student = _student_from_checkpoint(recipe, args.checkpoint)
    # the labeled splits only: a transfer set is training data
    loaders = build_loaders(recipe.data.model_copy(update={"transfer": None}))
    # a teacher-free Distiller reads the logits where the recipe's output_key says
    model = Distiller(student, None, [Term("ce", "ce")], output_key=recipe.output_key)
    device = resolve_device(recipe.train.device)
    metrics = evaluate(model.to(device), getattr(loaders, args.split), device=device)
    metrics = {"split": args.split, **metrics, "samples": int(metrics["samples"])}
    if not args.json and "top1" in metrics:
        metrics["top1"] = f"{metrics['top1']:.2f} %"
    _print_metrics(metrics, args.json)
    return EXIT_OK


register(
    Command(
        name="eval",
        summary="evaluate a trained student on the validation or test split",
        description="Load the student weights of a checkpoint into the recipe's student and "
        "print top-1, NLL and expected calibration error on a split of the recipe's dataset.",
        examples="torchkd eval configs/mnist1d/kd.yaml --checkpoint runs/mnist1d_kd/checkpoints/"
        "best.pt\ntorchkd eval configs/mnist1d/kd.yaml --checkpoint student.safetensors "
        "--split val --json",
        add_arguments=_eval_arguments,
        run=_eval,
    )
)


# ----------------------------------------------------------------------------------- export


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_argument(parser)
    parser.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="a torchkd training checkpoint"
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE.safetensors", help="where to write the weights"
    )


def _export(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file

    from torchkd.config import build_model
    from torchkd.train import CheckpointError, export_student

    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out must name a .safetensors file, got {args.out!r}")
    recipe = _load_recipe(args.recipe)
    _student_from_checkpoint(recipe, args.checkpoint)  # the weights fit the recipe's student
    try:
        path = export_student(args.checkpoint, args.out)
    except CheckpointError as error:
        raise UsageError(f"--checkpoint: {error}") from None
    fresh = build_model(recipe.student.model_copy(update={"checkpoint": None}), "student")
    fresh.load_state_dict(load_file(path))  # what was written loads into a new student
    count = sum(parameter.numel() for parameter in fresh.parameters())
    print(f"wrote {path}: student {recipe.student.model}, {count:,} parameters (no extras)")
    return EXIT_OK


register(
    Command(
        name="export",
        summary="write a checkpoint's bare student weights to a .safetensors file",
        description="Export the student of a training checkpoint, without adapters, loss "
        "state or optimizer, as safetensors with the SHA-256 digest of its tensors in its "
        "metadata. Load it with `student.load_state_dict(torchkd.train.load_student_weights("
        "FILE))`, which checks the digest (`safetensors.torch.load_file` reads it unchecked).",
        examples="torchkd export configs/mnist1d/kd.yaml "
        "--checkpoint runs/mnist1d_kd/checkpoints/best.pt --out student.safetensors",
        add_arguments=_export_arguments,
        run=_export,
    )
)


# ------------------------------------------------------------------------------------- list


def _list_entries(kind: str) -> list[tuple[str, ...]]:
    """Rows to print for ``torchkd list KIND`` (losses: a header, then name, family, signature)."""
    if kind == "models":
        from torchkd.models import available_models

        return [(name,) for name in available_models()]
    if kind == "datasets":
        from torchkd.data import available_datasets

        return [(name,) for name in available_datasets()]
    if kind == "losses":
        from torchkd import losses

        return [("name", "family", "called as (signature)")] + [
            (name, losses.entry(name).family, losses.entry(name).signature)
            for name in losses.available()
        ]
    from torchkd import schedules

    return [(name,) for name in schedules.available()]


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        choices=("models", "datasets", "losses", "schedules"),
        help="what to list (losses also show their family and how they are called)",
    )


def _list(args: argparse.Namespace) -> int:
    rows = _list_entries(args.kind)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return EXIT_OK


register(
    Command(
        name="list",
        summary="list registered models, datasets, losses or schedules",
        examples="torchkd list losses\ntorchkd list models",
        add_arguments=_list_arguments,
        run=_list,
    )
)


# ------------------------------------------------------------------- tune and select-teacher


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_argument(parser)
    _add_overrides_argument(parser)
    parser.add_argument(
        "--trials",
        type=_positive_int,
        metavar="N",
        help="finished (complete or pruned) trials to reach, counting those of an earlier run "
        "of this search (default: tune.trials)",
    )
    parser.add_argument(
        "--sampler", choices=("tpe", "random", "grid"), help="default: tune.sampler (tpe)"
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="K",
        help="processes running trials in parallel against the same study (default 1)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="where study.db, trials/, best/ and tune_report.md go (default: runs/<name>)",
    )
    parser.add_argument(
        "--storage", metavar="URL", help="an Optuna storage URL (default: sqlite:///DIR/study.db)"
    )
    parser.add_argument(
        "--no-retrain",
        action="store_true",
        help="skip retraining the best parameters (and so the one test-split evaluation)",
    )


def _tune(args: argparse.Namespace) -> int:
    import shlex

    from torchkd.config import load_raw_recipe
    from torchkd.tune import run_search

    path = _existing_file(args.recipe, "recipe")
    options = [
        f"--{name}={value}"
        for name, value in (
            ("trials", args.trials),
            ("sampler", args.sampler),
            ("workers", args.workers),
            ("out", args.out),
        )
        if value is not None
    ]
    command = shlex.join(["torchkd", "tune", args.recipe, *args.overrides, *options])
    result = run_search(
        load_raw_recipe(path),
        args.overrides,
        trials=args.trials,
        sampler=args.sampler,
        workers=args.workers,
        out=args.out,
        storage=args.storage,
        retrain=not args.no_retrain,
        command=command,
    )
    print()
    if result.best_params:
        print(f"best trial {result.best_trial}: validation {result.best_value:.4f}")
        for name, value in result.best_params.items():
            print(f"  {name} = {value}")
    if result.test_metrics and "top1" in result.test_metrics:
        top1 = result.test_metrics["top1"]
        print(f"retrained best parameters: test top-1 {top1:.2f} % (evaluated once)")
    print(f"report: {result.report_path}")
    return EXIT_OK


register(
    Command(
        name="tune",
        summary="search hyperparameters (T, α, weights, lr, ...) declared in the recipe's tune:",
        description="Run an Optuna search over the recipe's `tune.space` (dotted recipe paths), "
        "scoring each trial on the validation split carved from the training data and pruning "
        "poor trials from their per-epoch validation metric. The study is stored in SQLite, so "
        "rerunning the command resumes a stopped search. The best parameters are retrained and "
        "evaluated once on the test split; DIR/tune_report.md has every trial, the parameter "
        "importances and plots.",
        examples="torchkd tune configs/mnist1d/tune_kd.yaml --trials 20\n"
        "torchkd tune configs/mnist1d/tune_kd.yaml --sampler grid --workers 2\n"
        "torchkd tune configs/mnist1d/tune_kd.yaml train.epochs=10 --out runs/quick_search",
        add_arguments=_tune_arguments,
        run=_tune,
    )
)


def _select_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    _add_recipe_argument(parser)
    _add_overrides_argument(parser)
    parser.add_argument(
        "--candidates",
        nargs="+",
        action=_PathsAndOverrides,
        required=True,
        metavar="PATH",
        help="candidate teachers: torchkd checkpoints (their recipe gives the architecture) or "
        "bare weights (.safetensors) for the recipe's teacher architecture",
    )
    parser.add_argument(
        "--probe-steps",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="also distil the recipe's student from each candidate for N optimizer steps (and "
        "train it without KD); the probe then decides the ranking (default 0: no probe)",
    )
    parser.add_argument(
        "--probe-seeds",
        type=_positive_int,
        default=1,
        metavar="S",
        help="probes per candidate, averaged (default 1)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where teacher_selection.md goes (default: runs/<name>)"
    )


def _select_teacher(args: argparse.Namespace) -> int:
    from torchkd.select_teacher import select_teacher

    recipe = _load_recipe(args.recipe, args.overrides)
    for candidate in args.candidates:
        _existing_file(candidate, "--candidates")
    selection = select_teacher(
        recipe, args.candidates, probe_steps=args.probe_steps, probe_seeds=args.probe_seeds
    )
    table = selection.table()
    print()
    print(table)
    for result in selection.candidates:
        if result.warning:
            print(
                f"torchkd select-teacher: warning: {result.path}: {result.warning}", file=sys.stderr
            )
    if not selection.baseline_top1:
        print("(ranked by teacher accuracy; --probe-steps N ranks by the students they make)")
    best = selection.candidates[0]
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    report = out / "teacher_selection.md"
    report.write_text(
        f"# Teacher selection for {recipe.name} (ranked by {selection.ranked_by})\n\n{table}\n"
    )
    print(f"recommended: teacher.checkpoint={best.path}")
    print(f"report: {report}")
    return EXIT_OK


register(
    Command(
        name="select-teacher",
        summary="rank candidate teacher checkpoints on validation data (optionally by probe)",
        description="Evaluate each candidate teacher on the validation split (top-1, NLL, ECE) "
        "and, with --probe-steps, briefly distil the recipe's student from each (plus a student "
        "without KD as the baseline). The probe decides the ranking when present: an "
        "early-stopped or smaller teacher often distils better than the most accurate one.",
        examples="torchkd select-teacher configs/mnist1d/kd.yaml --candidates "
        "runs/mnist1d_teacher/checkpoints/*.pt\n"
        "torchkd select-teacher configs/mnist1d/kd.yaml train.epochs=5 --probe-steps 200 "
        "--candidates a.safetensors b.safetensors",
        add_arguments=_select_teacher_arguments,
        run=_select_teacher,
    )
)


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
    if recipe is not None and _is_override(recipe):
        subparser.error(f"the recipe comes first, then key=value overrides; got {recipe!r}")
    unknown = [word for word in extras if not (takes_overrides and _is_override(word))]
    if unknown:
        subparser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = [*args.overrides, *extras]
    return args, subparser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``torchkd`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 runtime failure, 2 bad usage, invalid recipe or damaged
        checkpoint.
    """
    from torchkd.config import ConfigError
    from torchkd.train.checkpoint import CheckpointError
    from torchkd.train.distributed import process_description, record_failure

    try:
        args, subparser = _parse(argv)
    except SystemExit as exit_request:  # --help, --version, argparse usage errors
        return int(exit_request.code or 0)
    show_traceback = args.traceback or os.environ.get("TORCHKD_TRACEBACK") == "1"
    try:
        return args.run(args)
    except (ConfigError, UsageError, CheckpointError) as error:
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
