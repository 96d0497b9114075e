"""The commands that look across runs and registries: ``list``, ``tune``, ``select-teacher``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchkd.cli.base import (
    EXIT_OK,
    Command,
    PathsAndOverrides,
    add_overrides_argument,
    add_recipe_argument,
    existing_file,
    load_recipe,
    non_negative_int,
    positive_int,
    register,
)

# ------------------------------------------------------------------------------------- list


def _constructor_arguments(module: type, probed: bool) -> str:
    """``name=default`` for each argument of ``module(...)``; one without a default reads
    ``name=<probed>`` when the loss's size rule fills it from the shapes, else ``name=<required>``.
    """
    import inspect

    missing = "<probed>" if probed else "<required>"
    shown = []
    for name, parameter in inspect.signature(module).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        default = missing if parameter.default is parameter.empty else repr(parameter.default)
        shown.append(f"{name}={default}")
    return ", ".join(shown) or "(none)"


def _list_entries(kind: str, verbose: bool = False) -> list[tuple[str, ...]]:
    """Rows to print for ``torchkd list KIND`` (losses: a header, then name, family, signature
    and, with ``verbose``, the loss's ``loss_kwargs`` with their defaults)."""
    if kind == "models":
        from torchkd.models import available_models

        return [(name,) for name in available_models()]
    if kind == "datasets":
        from torchkd.data import available_datasets

        return [(name,) for name in available_datasets()]
    if kind == "losses":
        from torchkd import losses

        header = ("name", "family", "called as (signature)")
        rows = [header + (("loss_kwargs (defaults)",) if verbose else ())]
        for name in losses.available():
            entry = losses.entry(name)
            row = (name, entry.family, entry.signature)
            rows.append(
                row
                + (
                    (_constructor_arguments(entry.module, entry.sizes is not None),)
                    if verbose
                    else ()
                )
            )
        return rows
    from torchkd import schedules

    return [(name,) for name in schedules.available()]


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kind",
        choices=("models", "datasets", "losses", "schedules"),
        help="what to list (losses also show their family and how they are called)",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="losses: also each loss's arguments (loss_kwargs) and their defaults",
    )


def _list(args: argparse.Namespace) -> int:
    rows = _list_entries(args.kind, args.verbose)
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
        examples="torchkd list losses\ntorchkd list losses --verbose\ntorchkd list models",
        add_arguments=_list_arguments,
        run=_list,
    )
)


# ------------------------------------------------------------------- tune and select-teacher


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--trials",
        type=positive_int,
        metavar="N",
        help="finished (complete or pruned) trials to reach, counting those of an earlier run "
        "of this search (default: tune.trials)",
    )
    parser.add_argument(
        "--sampler", choices=("tpe", "random", "grid"), help="default: tune.sampler (tpe)"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
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

    path = existing_file(args.recipe, "recipe")
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
        recipe_path=args.recipe,
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
    add_recipe_argument(parser)
    add_overrides_argument(parser)
    parser.add_argument(
        "--candidates",
        nargs="+",
        action=PathsAndOverrides,
        required=True,
        metavar="PATH",
        help="candidate teachers: torchkd checkpoints (their recipe gives the architecture) or "
        "bare weights (.safetensors) for the recipe's teacher architecture",
    )
    parser.add_argument(
        "--probe-steps",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="also distil the recipe's student from each candidate for N optimizer steps (and "
        "train it without KD); the probe then decides the ranking (default 0: no probe)",
    )
    parser.add_argument(
        "--probe-seeds",
        type=positive_int,
        default=1,
        metavar="S",
        help="probes per candidate, averaged (default 1)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="where teacher_selection.md goes (default: runs/<name>)"
    )


def _select_teacher(args: argparse.Namespace) -> int:
    from torchkd.select_teacher import select_teacher

    recipe = load_recipe(args.recipe, args.overrides)
    for candidate in args.candidates:
        existing_file(candidate, "--candidates")
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
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    report = out / "teacher_selection.md"
    recommendation = selection.recommendation()
    report.write_text(
        f"# Teacher selection for {recipe.name} (ranked by {selection.ranked_by})\n\n{table}\n"
        f"\n{recommendation}\n"
    )
    print(recommendation)
    print(f"report: {report}")
    return EXIT_OK


register(
    Command(
        name="select-teacher",
        summary="rank candidate teacher checkpoints on validation data (optionally by probe)",
        description="Evaluate each candidate teacher on the validation split (top-1, NLL, ECE) "
        "and, with --probe-steps, briefly distil the recipe's student from each (plus a student "
        "without KD as the baseline). The probe decides the ranking when present: an "
        "early-stopped or smaller teacher often distils better than the most accurate one. "
        "Candidates holding the same weights (best.pt and its epoch_XXX.pt) are measured once; "
        "a lead within noise gets a caveat line; when no probe student beats the one without "
        "KD, none is recommended.",
        examples="torchkd select-teacher configs/mnist1d/kd.yaml --candidates "
        "runs/mnist1d_teacher/checkpoints/*.pt\n"
        "torchkd select-teacher configs/mnist1d/kd.yaml train.epochs=5 --probe-steps 200 "
        "--candidates a.safetensors b.safetensors",
        add_arguments=_select_teacher_arguments,
        run=_select_teacher,
    )
)
