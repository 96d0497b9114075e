"""Running a recipe: :func:`fit_recipe`, the one path from a validated recipe to a trained run
(``torchkd train``, tuning trials and their final retrain, teacher-selection probes, the demo),
with the checks it makes before anything is written (:func:`check_built`) and before a run is
resumed (:func:`check_resumable`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.config.build import SPLIT_NAMES, Built, build_from_recipe, term_path
from torchkd.config.errors import ConfigError
from torchkd.config.generations import fit_generations
from torchkd.config.loading import write_resolved_config
from torchkd.config.schema import Recipe
from torchkd.train.checkpoint_layout import checkpoint_in_the_way, trainer_state_file

if TYPE_CHECKING:
    from torchkd.train import FitResult

__all__ = [
    "RESUMABLE_CHANGES",
    "adapter_lines",
    "check_built",
    "check_resumable",
    "fit_recipe",
    "recipe_changes",
    "score_best_checkpoint",
]


# What may differ when a run is resumed: more epochs, whether a progress bar is shown and
# whether TensorBoard files are written.
RESUMABLE_CHANGES = ("train.epochs", "train.progress", "train.tensorboard")


_ABSENT = "<absent>"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"dotted.path": leaf}`` of nested mappings and lists (empty containers are leaves)."""
    if isinstance(value, dict | list) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        flat: dict[str, Any] = {}
        for key, item in items:
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def recipe_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``"path: old -> new"`` for every value that differs between two resolved recipes.

    Example:
        >>> recipe_changes({"train": {"epochs": 2, "lr": 0.1}}, {"train": {"epochs": 4, "lr": 0.1}})
        ['train.epochs: 2 -> 4']
    """
    old, new = _flatten(before), _flatten(after)
    return [
        f"{path}: {old.get(path, _ABSENT)} -> {new.get(path, _ABSENT)}"
        for path in sorted(set(old) | set(new))
        if old.get(path, _ABSENT) != new.get(path, _ABSENT)
    ]


def check_resumable(recipe: Recipe, run_dir: str | Path) -> None:
    """Refuse to resume ``run_dir`` with a recipe other than the one it started with.

    Only ``train.epochs`` may grow (the learning-rate schedule is then re-planned over the new
    total, see :class:`torchkd.train.Trainer`) and ``train.progress`` and
    ``train.tensorboard`` (what is shown and logged, not what is trained) may change. Anything
    else -- a learning rate, a loss argument, a model -- would silently mix two runs.

    Raises:
        ConfigError: listing every other difference, ``path: run's value -> new value``.
    """
    from torchkd.train import load_checkpoint

    last = trainer_state_file(Path(run_dir) / "checkpoints" / "last.pt")
    if last is None:
        return  # the trainer says there is nothing to resume
    stored = load_checkpoint(last)["config"]
    if "name" not in stored:
        return  # started by torchkd.train.fit with no recipe: nothing to compare
    resolved = recipe.model_dump(mode="json")
    changes = [
        change
        for change in recipe_changes(stored, resolved)
        if change.split(":")[0] not in RESUMABLE_CHANGES
    ]
    before, after = stored["train"]["epochs"], resolved["train"]["epochs"]
    if after < before:
        changes.append(f"train.epochs: {before} -> {after} (a run can be extended, not shortened)")
    if changes:
        raise ConfigError(
            [
                f"--resume: the recipe differs from the one {run_dir} started with; only "
                "train.epochs may grow (and train.progress, train.tensorboard change). "
                "Differences, run -> now:",
                *[f"  {change}" for change in changes],
                "Start a new run (another --run-dir) to train with other settings.",
            ]
        )


def check_built(built: Built, recipe: Recipe) -> None:
    """Check a built run before anything is written: build the Distiller's adapters and loss
    modules on one validation batch and compute every term once, as an evaluation does (eval
    mode, no gradient, random generators and loss buffers restored), so bad loss arguments,
    tap paths and class counts fail now.

    Raises:
        ConfigError: naming the YAML path of the term (and of the loss argument) at fault.
    """
    from torchkd.distiller import TermError
    from torchkd.train import evaluate

    assert built.loaders.val is not None
    batch = next(iter(built.loaders.val))
    try:
        built.distiller.build(batch)  # the trainer's own build then does nothing
        evaluate(built.distiller, [batch], with_terms=True)
    except TermError as error:
        raise ConfigError([f"{term_path(recipe, error)}: {error}"]) from error


def score_best_checkpoint(built: Built, result: FitResult) -> dict[str, float] | None:
    """The test metrics of ``result.best_checkpoint``, the weights other recipes load
    (``teacher.checkpoint: runs/NAME/checkpoints/best.pt``): ``result.test_metrics`` when the
    best epoch is the last one, else the student's weights of ``best.pt`` evaluated in place of
    the final ones (restored afterwards). ``None`` without a test split or ``best.pt``, and
    under ``torchrun`` (several processes).
    """
    import torch

    from torchkd.train import evaluate, load_student_weights
    from torchkd.train.distributed import _launched_world_size

    best = result.best_checkpoint
    if built.loaders.test is None or best is None or _launched_world_size() > 1:
        return None
    if result.history and result.best_epoch == result.history[-1]["epoch"]:
        return result.test_metrics
    student = built.distiller.student
    final = {name: value.detach().clone() for name, value in student.state_dict().items()}
    student.load_state_dict(load_student_weights(best))
    try:
        device = next(student.parameters(), torch.empty(0)).device
        return evaluate(
            built.distiller, built.loaders.test, device=device, amp=built.train_config.amp
        )
    finally:
        student.load_state_dict(final)


def adapter_lines(built: Built, recipe: Recipe) -> list[str]:
    """One line per shape adapter the Distiller built (``adapter: auto`` builds them silently):
    the term's YAML path, its taps, the layers and their parameter count."""
    from torch import nn

    lines = []
    extras = dict(built.distiller.extras.items())  # an nn.ModuleDict has no .get
    for index, term in enumerate(recipe.terms):
        parts = dict(extras[term.name].items()) if term.name in extras else {}
        for adapter in parts.get("adapters", []):
            if isinstance(adapter, nn.Identity):
                continue
            layers = [m for m in adapter.modules() if not list(m.children())]
            count = sum(p.numel() for p in adapter.parameters())
            lines.append(
                f"terms.{index} ({term.name}): adapter {term.student} -> {term.teacher}: "
                f"{' + '.join(map(repr, layers))}, {count:,} parameters"
            )
    return lines


def fit_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    resume: bool = False,
    evaluate_test: bool = True,
    report: bool = True,
    progress: bool | None = None,
    train_samples: int | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    baseline: str | Path | None = None,
) -> FitResult:
    """Build everything a recipe names and train it with :func:`torchkd.train.fit`.

    The one path from a validated recipe to a trained run: ``torchkd train``, tuning trials
    and the final retrain, teacher-selection probes and the demo. It writes the resolved
    recipe to ``run_dir/config.yaml`` (and into every checkpoint) and, with ``report``, the
    run report (``report.md`` and plots).

    Args:
        recipe: the validated recipe.
        run_dir: the run directory.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        evaluate_test: build the test split and evaluate the final model on it; ``False``
            never builds it (searches and probes).
        report: write ``report.md`` and the plots.
        progress: overrides ``train.progress``.
        train_samples: train on this many samples only (see :func:`build_loaders`).
        on_epoch_end: called with each evaluated epoch's record (see
            :func:`torchkd.train.fit`).
        baseline: a run directory the report compares with (:func:`torchkd.report.write_report`).

    A recipe with ``generations: N > 1`` runs as a born-again chain
    (:func:`~torchkd.config.generations.fit_generations`): each generation is one call of this
    function, in ``run_dir/gen<g>/``; the last generation's result is returned.
    """
    from torchkd.train import fit
    from torchkd.train.distributed import is_main_process

    if recipe.generations > 1:

        def fit_one(one: Recipe, directory: Path, resume_one: bool) -> FitResult:
            return fit_recipe(
                one,
                directory,
                resume=resume_one,
                evaluate_test=evaluate_test,
                report=report,
                progress=progress,
                train_samples=train_samples,
                on_epoch_end=on_epoch_end,
                baseline=baseline,
            )

        return fit_generations(recipe, run_dir, fit_one, resume=resume, report=report)
    if resume:
        check_resumable(recipe, run_dir)
    splits = SPLIT_NAMES if evaluate_test else ("train", "val")
    built = build_from_recipe(recipe, splits=splits, train_samples=train_samples)
    train_config = built.train_config
    if progress is not None:
        train_config = train_config.model_copy(update={"progress": progress})
    check_built(built, recipe)
    resolved = recipe.model_dump(mode="json")
    main = is_main_process()  # under torchrun, rank 0 alone writes files
    if main and train_config.progress:
        for line in adapter_lines(built, recipe):
            print(f"torchkd: built {line}", file=sys.stderr)
    if main and (resume or not checkpoint_in_the_way(Path(run_dir) / "checkpoints" / "last.pt")):
        write_resolved_config(resolved, run_dir)  # resumed: the same recipe, or more epochs
    result = fit(
        built.distiller,
        built.loaders.train,
        built.loaders.val,
        train_config,
        run_dir,
        resume=resume,
        test_loader=built.loaders.test,
        resolved_config=resolved,
        on_epoch_end=on_epoch_end,
    )
    if evaluate_test:
        result.best_test_metrics = score_best_checkpoint(built, result)
    if report and main:
        from torchkd.report import parameter_counts, write_report

        result.report_path = write_report(
            result.run_dir,
            result.history,
            test_metrics=result.test_metrics,
            model_sizes=parameter_counts(built.distiller.student, built.distiller.teachers),
            baseline=baseline,
        )
    return result
