"""``torchkd demo``: the teacher (trained once, then cached), then every arm at every seed."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from torchkd.demo.arms import (
    ARMS,
    Arm,
    ArmRun,
    arm_overrides,
    demo_recipe_path,
    describe_model,
    teacher_cache_path,
    teacher_recipe,
    train_arm,
    train_teacher,
)
from torchkd.demo.report import DemoResult, results_markdown, write_demo_report
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = ["RESULTS_FILE", "demo_command", "describe_terms", "run_demo"]

Echo = Callable[[str], None]

# Where a full (not --quick) demo run from a torchkd checkout also writes its table.
RESULTS_FILE = Path("benchmarks") / "results" / "demo.md"


def demo_command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    """The ``torchkd demo`` command line that repeats a run with these arguments."""
    words = ["torchkd demo", f"--seeds {seeds}"]
    words += ["--quick"] if quick else []
    words += [f"--out {out}"] + ([f"--workers {workers}"] if workers is not None else [])
    return " ".join(words)


def describe_terms(recipe: Recipe) -> str:
    """``"0.9 x kd(temperature=8.0) + 0.1 x ce()"``: a recipe's loss terms as resolved."""
    terms = []
    for term in recipe.terms:
        arguments = ", ".join(f"{key}={value}" for key, value in term.loss_kwargs.items())
        weight = "" if term.weight == 1.0 else f"{term.weight} x "
        terms.append(f"{weight}{term.loss}({arguments})")
    return " + ".join(terms)


def _results_file(
    results: str | Path | None, quick: bool, default: Path = RESULTS_FILE
) -> Path | None:
    """``results``, or by default ``default`` (:data:`RESULTS_FILE` for this demo) when its
    folder exists here (a torchkd checkout) and the run is a real one (not ``--quick``)."""
    if results is not None:
        return Path(results)
    return default if not quick and default.parent.is_dir() else None


def run_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo",
    workers: int | None = None,
    echo: Echo = print,
    results: str | Path | None = None,
) -> DemoResult:
    """Run the demo and write ``OUT/report.md``; returns what it measured.

    Args:
        seeds: number of seeds per arm (seeds ``0 .. seeds - 1``).
        quick: a few optimizer steps per run (a smoke test, not a result).
        out: the demo's output directory; its ``teacher/``, ``<arm>/seed<k>/`` run
            directories and ``report.md`` from a previous demo are replaced.
        workers: processes training runs in parallel (default: one per available CPU core,
            each with one thread; ``1`` trains in this process).
        echo: where progress lines go.
        results: where to write the results table with its command, environment and wall
            time (default: ``benchmarks/results/demo.md`` when that folder exists in the
            working directory, i.e. in a torchkd checkout, and the run is not ``quick``).
    """
    from torchkd.config import build_loaders, build_model, load_recipe
    from torchkd.train import evaluate

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    started = time.perf_counter()
    command = demo_command(seeds, quick, Path(out), workers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = {arm.key: demo_recipe_path(arm.recipe) for arm in ARMS}
    teacher_spec = teacher_recipe(quick).student
    teacher_weights = teacher_cache_path(quick)
    cached = teacher_weights.is_file()
    runs_total = len(ARMS) * seeds
    if workers is None:
        workers = min(available_cpus(), runs_total + (not cached))
    worker_text = (
        f"{workers} processes x {RUN_THREADS} thread"
        if workers > 1
        else f"in-process, {RUN_THREADS} thread"
    )
    echo(
        f"{'reusing' if cached else 'training'} the teacher ({teacher_weights}); "
        f"{runs_total} student runs ({len(ARMS)} arms x {seeds} seeds), {workers} at a time"
    )
    runs: list[ArmRun] = []

    def collect(futures: list[Future[ArmRun]]) -> None:
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs.append(run)
            echo(
                f"  {run.arm:<11} seed {run.seed}: test top-1 {run.test['top1']:5.1f} %"
                f"  ({run.seconds:.0f} s)"
            )

    def submit(pool: concurrent.futures.Executor, arm: Arm) -> list[Future[ArmRun]]:
        overrides = arm_overrides(recipes[arm.key], quick, teacher_weights)
        return [
            pool.submit(
                train_arm, arm.key, seed, overrides, str(out / arm.key / f"seed{seed}"), not quick
            )
            for seed in range(seeds)
        ]

    teacher_seconds = 0.0
    with executor(workers) as pool:
        try:
            if not cached:
                teacher_job = pool.submit(train_teacher, quick, str(out / "teacher"))
            baseline_jobs = submit(pool, ARMS[0])  # needs no teacher: runs alongside it
            # meanwhile, generate (and cache) the transfer set once for the label-free runs
            label_free = load_recipe(
                recipes["label_free"], arm_overrides(recipes["label_free"], quick, None)
            )
            loaders = build_loaders(label_free.data)
            if not cached:
                teacher_weights, teacher_seconds = teacher_job.result()
            distill_jobs = [job for arm in reversed(ARMS[1:]) for job in submit(pool, arm)]
            teacher = build_model(
                label_free.teacher_configs[0].model_copy(
                    update={"checkpoint": str(teacher_weights)}
                ),
                "teacher",
            )
            with run_threads():
                teacher_test = evaluate(teacher, loaders.test)
            collect(baseline_jobs + distill_jobs)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    result = DemoResult(
        teacher_test=teacher_test,
        teacher_description=describe_model(teacher_spec),
        teacher_cached=cached,
        teacher_seconds=teacher_seconds,
        runs=sorted(runs, key=lambda run: (run.arm, run.seed)),
        seeds=list(range(seeds)),
        student_description=describe_model(label_free.student),
        transfer_samples=len(loaders.train.dataset),
        environment={**environment(), "threads": worker_text},
        teacher_weights=str(teacher_weights),
        arm_terms={
            arm.key: describe_terms(load_recipe(recipes[arm.key], ["train.progress=false"]))
            for arm in ARMS
        },
        command=command,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_demo_report(result, out, quick=quick)
    results_file = _results_file(results, quick)
    if results_file is not None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(results_markdown(result))
        echo(f"results table written to {results_file}")
    return result
