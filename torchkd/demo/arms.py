"""The demo's arms and runs: its recipes (``torchkd/configs/demo/``), the cached teacher, and
one arm trained at one seed -- each through :func:`torchkd.config.fit_recipe`."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.demo.workers import run_threads

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = [
    "ARMS",
    "QUICK_OVERRIDES",
    "QUICK_TRANSFER_SAMPLES",
    "TEACHER_RECIPE",
    "Arm",
    "ArmRun",
    "arm_overrides",
    "demo_recipe_path",
    "describe_model",
    "teacher_cache_path",
    "teacher_recipe",
    "train_arm",
    "train_teacher",
]


@dataclass(frozen=True)
class Arm:
    """One row of the demo table: a recipe in ``torchkd/configs/demo/`` and its label."""

    key: str
    recipe: str
    label: str


ARMS: tuple[Arm, ...] = (
    Arm("baseline", "baseline.yaml", "student baseline (labels only)"),
    Arm("kd", "kd.yaml", "(a) Hinton KD with labels"),
    Arm("label_free", "label_free.yaml", "(b) label-free KD (unlabeled transfer set)"),
)
TEACHER_RECIPE = "teacher.yaml"

# --quick: a handful of optimizer steps per run, for tests and smoke checks.
QUICK_OVERRIDES = ("train.epochs=1", "data.batch_size=256")
QUICK_TRANSFER_SAMPLES = 512


@dataclass
class ArmRun:
    """The outcome of one arm at one seed.

    Attributes:
        arm: the arm's key.
        seed: ``train.seed`` of the run.
        test: test metrics of the final model (``top1`` in [0, 1]).
        val_curve: ``(optimizer step, validation top-1)`` after every epoch.
        seconds: wall time of the run.
        run_dir: the run directory.
    """

    arm: str
    seed: int
    test: dict[str, float]
    val_curve: list[tuple[int, float]]
    seconds: float
    run_dir: str


def demo_recipe_path(name: str) -> Path:
    """Path of a recipe shipped in ``torchkd/configs/demo/`` (e.g. ``"kd.yaml"``)."""
    return Path(str(resources.files("torchkd") / "configs" / "demo" / name))


def arm_overrides(recipe_path: Path, quick: bool, teacher_weights: Path | None) -> list[str]:
    """Overrides for one demo recipe: the cached teacher (where the recipe has a teacher),
    no progress bars, and with ``quick`` a few steps and a small transfer set."""
    from torchkd.config import load_recipe

    recipe = load_recipe(recipe_path)
    overrides = ["train.progress=false"]
    if teacher_weights is not None and recipe.teacher is not None:
        overrides.append(f"teacher.checkpoint={teacher_weights}")
    if quick:
        overrides += QUICK_OVERRIDES
        if recipe.data.transfer is not None:
            overrides.append(f"data.transfer.num_samples={QUICK_TRANSFER_SAMPLES}")
    return overrides


def _fresh_dir(path: Path) -> Path:
    """Remove a previous demo's ``path`` (the demo rewrites its own run directories)."""
    if path.exists():
        shutil.rmtree(path)
    return path


def describe_model(spec: Any) -> str:
    """``"cnn1d(width=16)"`` for a recipe's model section (a ``module:Class`` path loses its
    module)."""
    arguments = ", ".join(f"{key}={value}" for key, value in spec.kwargs.items())
    return f"{spec.model.rpartition(':')[2]}({arguments})"


def teacher_recipe(quick: bool) -> Recipe:
    from torchkd.config import load_recipe

    path = demo_recipe_path(TEACHER_RECIPE)
    return load_recipe(path, arm_overrides(path, quick, teacher_weights=None))


def teacher_cache_path(quick: bool) -> Path:
    """Where the demo's teacher weights are cached: ``teachers/<name>-<hash>.safetensors``
    under :func:`torchkd.data.cache_dir`, the hash taken over everything that determines the
    teacher (:func:`torchkd.demo.fingerprint.teacher_fingerprint`: the resolved recipe, the
    torchkd code that trains it, the torch / numpy / mnist1d versions)."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key
    from torchkd.demo.fingerprint import teacher_fingerprint

    recipe = teacher_recipe(quick)
    key = cache_key(teacher_fingerprint(recipe.model_dump(mode="json")))
    return cache_dir() / "teachers" / f"{recipe.name}-{key}.safetensors"


def train_teacher(quick: bool, run_dir: str) -> tuple[Path, float]:
    """Train the demo teacher into ``run_dir`` (one torch thread) and cache its best
    checkpoint's weights.

    Returns:
        ``(cached weights path, training seconds)``.
    """
    from torchkd.config import fit_recipe
    from torchkd.train import export_student

    recipe = teacher_recipe(quick)
    started = time.perf_counter()
    with run_threads():
        result = fit_recipe(recipe, _fresh_dir(Path(run_dir)), evaluate_test=False, report=False)
    weights = export_student(
        result.best_checkpoint or result.last_checkpoint, teacher_cache_path(quick)
    )
    return weights, time.perf_counter() - started


def train_arm(
    arm_key: str,
    seed: int,
    overrides: Sequence[str],
    run_dir: str,
    run_report: bool = True,
) -> ArmRun:
    """Train one arm's recipe at ``seed`` into ``run_dir`` (a fresh directory), with one torch
    thread (:func:`torchkd.demo.workers.run_threads`); ``run_report`` writes the run's own
    ``report.md`` and plots."""
    from torchkd.config import fit_recipe, load_recipe

    arm = next(arm for arm in ARMS if arm.key == arm_key)
    recipe = load_recipe(demo_recipe_path(arm.recipe), [*overrides, f"train.seed={seed}"])
    started = time.perf_counter()
    with run_threads():
        result = fit_recipe(recipe, _fresh_dir(Path(run_dir)), report=run_report)
    return ArmRun(
        arm=arm_key,
        seed=seed,
        test=dict(result.test_metrics or {}),
        val_curve=[(record["step"], record["val"]["top1"]) for record in result.history],
        seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
    )
