"""One run of ``benchmarks/methods_mnist1d.py``: a method's recipe (and first stage, or
born-again generations) built with :func:`torchkd.config.build_from_recipe` and trained with
:func:`torchkd.train.fit` on the benchmark's batches; the cached teacher."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .batches import num_train_rows, train_loader
from .log import config_key, recipe_hash
from .rows import (
    BATCHES_PER_EPOCH,
    METHODS,
    RECIPES,
    STAGE1_FRACTION,
    STEPS,
    TEACHER_OVERRIDES,
    common_overrides,
)


def teacher_checkpoint() -> Path:
    """Train ``teacher.yaml`` once; later calls return the cached checkpoint."""
    from torchkd.config import build_from_recipe, load_recipe
    from torchkd.data import cache_dir
    from torchkd.train import fit

    path = RECIPES / "teacher.yaml"
    run_dir = (
        cache_dir() / "benchmarks" / f"mnist1d_teacher-{recipe_hash([path], TEACHER_OVERRIDES)}"
    )
    checkpoint = run_dir / "checkpoints" / "best.pt"
    if checkpoint.exists():
        return checkpoint
    started = time.perf_counter()
    recipe = load_recipe(path, TEACHER_OVERRIDES)
    distiller, loaders, config = build_from_recipe(recipe)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=".partial-"))
    result = fit(
        distiller,
        loaders.train,
        loaders.val,
        config,
        scratch,
        test_loader=loaders.test,
        resolved_config=recipe.model_dump(mode="json"),
    )
    print(
        f"teacher: test top-1 {result.test_metrics['top1']:.1f}% "
        f"({time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    os.replace(scratch, run_dir)
    return checkpoint


@dataclass(frozen=True)
class Job:
    method: str
    student: str
    setting: str
    seed: int
    teacher: str
    steps: int = STEPS
    group: str = "all"


def stage_overrides(job: Job, recipe: Path, num_labeled: int, stage1: bool = False) -> list[str]:
    """Common settings, seed, teacher, student family and (for CRD) the bank size."""
    import yaml

    overrides = [*common_overrides(job.steps), f"train.seed={job.seed}"]
    raw = yaml.safe_load(recipe.read_text())
    if "teacher" in raw:
        overrides.append(f"teacher.checkpoint={job.teacher}")
    if job.student == "mlp":
        method = METHODS[job.method]
        overrides += ["student.model=mlp", "student.kwargs={}"]
        overrides += method.stage1_mlp_overrides if stage1 else method.mlp_overrides
    if not stage1:
        overrides += METHODS[job.method].overrides
    for index, term in enumerate(raw["terms"]):
        if term["loss"] == "crd":
            rows = num_train_rows(job.setting, num_labeled)
            overrides.append(f"terms.{index}.loss_kwargs.num_samples={rows}")
    return overrides


def train_stage(
    job: Job, recipe_name: str, overrides: list[str], run_dir: Path, extras_from: Path | None
) -> Any:
    """Build ``recipe_name`` with ``overrides`` and train it with :func:`torchkd.train.fit`."""
    from torchkd.config import load_recipe

    return train_recipe(job, load_recipe(RECIPES / recipe_name, overrides), run_dir, extras_from)


def train_recipe(job: Job, recipe: Any, run_dir: Path, extras_from: Path | None = None) -> Any:
    """Build the loaded ``recipe`` and train it on ``job``'s batches with :func:`fit`."""
    from torchkd.config import build_from_recipe
    from torchkd.train import fit
    from torchkd.train.checkpoint import load_checkpoint

    distiller, loaders, config = build_from_recipe(recipe)
    loader = train_loader(job.setting, loaders.train.dataset, job.seed)
    if extras_from is not None:
        # Factor transfer's second stage starts from the paraphraser of the first (the recipe
        # schema cannot load extras weights yet): build, then load the stage-1 extras.
        distiller.build(next(iter(loader)))
        extras = load_checkpoint(extras_from)["extras"]
        own = distiller.extras.state_dict()
        distiller.extras.load_state_dict(
            {k: v for k, v in extras.items() if "paraphraser" in k}
            | {k: v for k, v in own.items() if "paraphraser" not in k}
        )
    return fit(
        distiller,
        loader,
        loaders.val,
        config,
        run_dir,
        test_loader=loaders.test,
        resolved_config=recipe.model_dump(mode="json"),
    )


def train_generations(job: Job, overrides: list[str], run_dir: Path) -> list[tuple[Any, float]]:
    """The born-again chain of ``job``'s recipe (``generations: N``), run by the library's
    :func:`~torchkd.config.generations.fit_generations` with every generation trained by
    :func:`train_recipe` on the runner's batches: generation 1 learns from the cached teacher,
    generation ``g > 1`` is a fresh network of the same architecture (seed
    ``generation_seed(seed, g)``) taught by generation ``g - 1``'s ``best.pt``.

    Returns ``(result, seconds)`` per generation.
    """
    from torchkd.config import load_recipe
    from torchkd.config.generations import fit_generations

    recipe = load_recipe(RECIPES / METHODS[job.method].recipe, overrides)
    trained: list[tuple[Any, float]] = []

    def fit_one(generation: Any, directory: Path, resume: bool) -> Any:
        started = time.perf_counter()
        result = train_recipe(job, generation, directory)
        trained.append((result, time.perf_counter() - started))
        return result

    fit_generations(recipe, run_dir, fit_one, resume=False, report=False)
    return trained


def record(job: Job, result: Any, seconds: float, generation: int = 1) -> dict[str, Any]:
    """The log line of one trained model."""
    return {
        "method": job.method,
        "student": job.student,
        "setting": job.setting,
        "seed": job.seed,
        **({"generation": generation} if METHODS[job.method].generations > 1 else {}),
        "test_top1": result.test_metrics["top1"],
        "val_top1": result.final_metrics.get("top1", float("nan")),
        "nonfinite_steps": result.nonfinite_steps,
        "seconds": seconds,
        "config": config_key(job.steps, job.group),
    }


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train one (method, student, setting, seed); return its records (one per generation)."""
    torch.set_num_threads(1)
    from torchkd.data import load_mnist1d

    method = METHODS[job.method]
    num_labeled = len(load_mnist1d("train"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="torchkd-methods-") as scratch:
        if method.generations > 1:
            overrides = stage_overrides(job, RECIPES / method.recipe, num_labeled)
            overrides.append(f"generations={method.generations}")
            chain = train_generations(job, overrides, Path(scratch))
            return [record(job, *trained, g) for g, trained in enumerate(chain, start=1)]
        student_checkpoint, extras_from = None, None
        if method.stage1 is not None:
            stage1 = stage_overrides(job, RECIPES / method.stage1, num_labeled, stage1=True)
            stage1_epochs = max(1, round(STAGE1_FRACTION * job.steps / BATCHES_PER_EPOCH))
            stage1.append(f"train.epochs={stage1_epochs}")
            result = train_stage(job, method.stage1, stage1, Path(scratch) / "stage1", None)
            if job.method == "factor_transfer":
                extras_from = result.last_checkpoint
            else:
                student_checkpoint = result.last_checkpoint
        overrides = stage_overrides(job, RECIPES / method.recipe, num_labeled)
        if student_checkpoint is not None:
            overrides.append(f"student.checkpoint={student_checkpoint}")
        result = train_stage(job, method.recipe, overrides, Path(scratch) / "run", extras_from)
    return [record(job, result, time.perf_counter() - started)]


def teacher_test_top1(checkpoint: Path) -> float:
    """Test top-1 (%) of the cached teacher."""
    import yaml

    from torchkd.config import ModelConfig, build_model
    from torchkd.data import load_mnist1d
    from torchkd.train.evaluate import evaluate

    spec = yaml.safe_load((RECIPES / "teacher.yaml").read_text())["student"]
    teacher = build_model(ModelConfig(**spec, checkpoint=str(checkpoint)), "teacher")
    test = DataLoader(load_mnist1d("test"), batch_size=1000)
    return evaluate(teacher, test)["top1"]
