"""``torchkd demo``: the teacher (trained once, then cached), then every arm at every seed."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from torchkd._extras import require
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

__all__ = [
    "RESULTS_FILE",
    "check_publishable",
    "demo_command",
    "describe_terms",
    "run_demo",
    "write_results",
]

Echo = Callable[[str], None]

# Where `torchkd demo --publish` (the maintainers' `make publish-demo`), run from the root of a
# torchkd checkout, also writes its results page: the README's demo table is that page's table.
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


def check_publishable(published: Path, quick: bool) -> None:
    """Refuse to publish a results page that is not a result, or outside a checkout.

    Raises:
        ValueError: ``quick`` (a smoke test), or ``published``'s folder (``benchmarks/results``)
            does not exist in the working directory.
    """
    if quick:
        raise ValueError("a --quick run is a smoke test, not a result: it is not published")
    if not published.parent.is_dir():
        raise ValueError(
            f"{published.parent}/ does not exist in {Path.cwd()}: publish from the root of a "
            "torchkd checkout"
        )


def write_results(page: str, out: Path, published: Path | None, echo: Echo) -> Path:
    """Write a demo's results page to ``out/results.md`` and, when ``published`` is given (the
    maintainers' ``--publish``), the same page to ``published``; returns ``out/results.md``.
    A user's run writes under ``out`` only."""
    path = out / "results.md"
    for target in [path] if published is None else [path, published]:
        target.write_text(page)
        echo(f"results table written to {target}")
    return path


def run_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo",
    workers: int | None = None,
    echo: Echo = print,
    publish: bool = False,
) -> DemoResult:
    """Run the demo and write ``OUT/report.md`` and ``OUT/results.md``; returns what it measured.

    Args:
        seeds: number of seeds per arm (seeds ``0 .. seeds - 1``).
        quick: a few optimizer steps per run (a smoke test, not a result).
        out: the demo's output directory; its ``teacher/``, ``<arm>/seed<k>/`` run
            directories and ``report.md`` from a previous demo are replaced.
        workers: processes training runs in parallel (default: one per available CPU core,
            each with one thread; ``1`` trains in this process).
        echo: where progress lines go.
        publish: also write the results page (the table with its command, environment and
            wall time) to :data:`RESULTS_FILE` of the torchkd checkout in the working
            directory (refused for ``quick`` runs and outside a checkout, before any training;
            see :func:`check_publishable`).
    """
    from torchkd.config import build_loaders, build_model, load_recipe
    from torchkd.train import evaluate

    for module in ("mnist1d", "matplotlib"):  # before any training
        require(module, "demo", "torchkd demo")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if publish:
        check_publishable(RESULTS_FILE, quick)
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
    write_results(results_markdown(result), out, RESULTS_FILE if publish else None, echo)
    return result
