"""The built-in demo: distil a wide MNIST-1D CNN into a small student, three ways, over seeds.

``torchkd demo`` runs four recipes from ``torchkd/configs/demo/`` through the ordinary engine
(:func:`torchkd.config.build_from_recipe` + :func:`torchkd.train.fit`), nothing demo-specific:

- ``teacher.yaml``: the teacher, trained once on the labels and cached as safetensors under
  ``$TORCHKD_CACHE`` (default ``~/.cache/torchkd``), keyed by a hash of the resolved recipe;
- ``baseline.yaml``: the student on the labels alone;
- ``kd.yaml``, arm (a): Hinton KD with labels on the same labeled training set;
- ``label_free.yaml``, arm (b): label-free KD, the teacher's soft targets on fresh unlabeled
  MNIST-1D samples (the student never sees a label).

Each student recipe runs once per seed (``train.seed``: the student's initialisation and the
shuffle order, shared by the three arms so that seeds pair up). Every number is measured on
the run: the table reports test top-1 as mean ± sample std over seeds, and each arm's gain over
the baseline as the mean ± std of the per-seed (paired) differences.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = [
    "ARMS",
    "Arm",
    "ArmRun",
    "DemoResult",
    "demo_recipe_path",
    "environment",
    "paired_gain",
    "run_demo",
    "summary_markdown",
    "summary_text",
    "teacher_cache_path",
    "train_arm",
    "train_teacher",
    "write_demo_report",
]

Echo = Callable[[str], None]


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


@dataclass
class DemoResult:
    """Everything ``torchkd demo`` measured.

    Attributes:
        teacher_test: the teacher's test metrics (``top1`` in [0, 1], ``nll``, ``ece``).
        teacher_description: e.g. ``"cnn1d(width=64)"``.
        teacher_cached: the teacher's weights came from the cache (not trained in this run).
        teacher_seconds: time spent training the teacher (0 when cached).
        runs: one :class:`ArmRun` per arm and seed.
        seeds: the seeds used.
        seconds: wall time of the whole demo.
        report_path: ``OUT/report.md``.
        student_description: e.g. ``"mlp(hidden=[256])"``.
        transfer_samples: size of the unlabeled transfer set of arm (b).
        environment: torch and Python versions, CPU, core count, device.
    """

    teacher_test: dict[str, float]
    teacher_description: str
    teacher_cached: bool
    teacher_seconds: float
    runs: list[ArmRun]
    seeds: list[int]
    seconds: float = 0.0
    report_path: Path | None = None
    student_description: str = ""
    transfer_samples: int = 0
    environment: dict[str, str] = field(default_factory=dict)

    def top1(self, arm: str) -> list[float]:
        """Test top-1 (percent) of ``arm``, in seed order."""
        by_seed = {run.seed: run for run in self.runs if run.arm == arm}
        return [100.0 * by_seed[seed].test["top1"] for seed in self.seeds]

    def table(self) -> str:
        """The summary table (plain text, fixed width)."""
        return summary_text(self)


def demo_recipe_path(name: str) -> Path:
    """Path of a recipe shipped in ``torchkd/configs/demo/`` (e.g. ``"kd.yaml"``)."""
    return Path(str(resources.files("torchkd") / "configs" / "demo" / name))


def _mean_std(values: Sequence[float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:{sign}.1f}"
    return f"{mean:{sign}.1f} ± {statistics.stdev(values):.1f}"


def paired_gain(arm_top1: Sequence[float], baseline_top1: Sequence[float]) -> tuple[str, int]:
    """Mean ± std of the per-seed differences ``arm - baseline`` and how many are positive.

    Example:
        >>> paired_gain([80.0, 82.0, 81.0], [78.0, 79.0, 81.5])
        ('+1.5 ± 1.8', 2)
    """
    differences = [a - b for a, b in zip(arm_top1, baseline_top1, strict=True)]
    return _mean_std(differences, signed=True), sum(d > 0 for d in differences)


SUMMARY_HEADER = ("", "test top-1 (%)", "gain vs baseline (paired)", "better than baseline")


def summary_cells(result: DemoResult) -> list[tuple[str, str, str, str]]:
    """Rows of the summary table: teacher, baseline, (a), (b)."""
    source = "cached" if result.teacher_cached else f"trained in {result.teacher_seconds:.0f} s"
    rows = [
        (
            f"teacher {result.teacher_description}, {source}",
            f"{100 * result.teacher_test['top1']:.1f}",
            "",
            "",
        )
    ]
    baseline = result.top1("baseline")
    for arm in ARMS:
        values = result.top1(arm.key)
        if arm.key == "baseline":
            rows.append((arm.label, _mean_std(values), "", ""))
            continue
        gain, wins = paired_gain(values, baseline)
        rows.append((arm.label, _mean_std(values), gain, f"{wins}/{len(result.seeds)} seeds"))
    return rows


def summary_text(result: DemoResult) -> str:
    """The summary table as fixed-width text."""
    rows = [SUMMARY_HEADER, *summary_cells(result)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(SUMMARY_HEADER))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:3], widths[1:3], strict=True)]
        cells.append(row[3])
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def summary_markdown(result: DemoResult) -> str:
    """The summary table as markdown."""
    rows = [SUMMARY_HEADER, ("---",) * len(SUMMARY_HEADER), *summary_cells(result)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def per_seed_markdown(result: DemoResult) -> str:
    """Test top-1 (%) per seed and arm, as markdown."""
    lines = [
        "| seed | " + " | ".join(arm.label for arm in ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    columns = [result.top1(arm.key) for arm in ARMS]
    for position, seed in enumerate(result.seeds):
        cells = [f"{column[position]:.1f}" for column in columns]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- running


def _arm_overrides(recipe_path: Path, quick: bool, teacher_weights: Path | None) -> list[str]:
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


def _describe_model(spec: Any) -> str:
    """``"cnn1d(width=16)"`` for a recipe's model section (a ``module:Class`` path loses its
    module)."""
    arguments = ", ".join(f"{key}={value}" for key, value in spec.kwargs.items())
    return f"{spec.model.rpartition(':')[2]}({arguments})"


def _teacher_recipe(quick: bool) -> Recipe:
    from torchkd.config import load_recipe

    path = demo_recipe_path(TEACHER_RECIPE)
    return load_recipe(path, _arm_overrides(path, quick, teacher_weights=None))


def teacher_cache_path(quick: bool) -> Path:
    """Where the demo's teacher weights are cached: ``teachers/<name>-<hash>.safetensors``
    under :func:`torchkd.data.cache_dir`, the hash taken over the resolved teacher recipe."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key

    recipe = _teacher_recipe(quick)
    key = cache_key(recipe.model_dump(mode="json"))
    return cache_dir() / "teachers" / f"{recipe.name}-{key}.safetensors"


def train_teacher(quick: bool, run_dir: str) -> tuple[Path, float]:
    """Train the demo teacher into ``run_dir`` and cache its best checkpoint's weights.

    Returns:
        ``(cached weights path, training seconds)``.
    """
    from torchkd.config import fit_recipe
    from torchkd.train import export_student

    recipe = _teacher_recipe(quick)
    started = time.perf_counter()
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
    """Train one arm's recipe at ``seed`` into ``run_dir`` (a fresh directory);
    ``run_report`` writes the run's own ``report.md`` and plots."""
    from torchkd.config import fit_recipe, load_recipe

    arm = next(arm for arm in ARMS if arm.key == arm_key)
    recipe = load_recipe(demo_recipe_path(arm.recipe), [*overrides, f"train.seed={seed}"])
    started = time.perf_counter()
    result = fit_recipe(recipe, _fresh_dir(Path(run_dir)), report=run_report)
    return ArmRun(
        arm=arm_key,
        seed=seed,
        test=dict(result.test_metrics or {}),
        val_curve=[(record["step"], record["val"]["top1"]) for record in result.history],
        seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
    )


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class _InProcess(concurrent.futures.Executor):
    """Runs each submitted call at once, in this process (``workers=1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_threads(workers: int) -> int:
    return max(1, _available_cpus() // workers)


def _executor(workers: int) -> concurrent.futures.Executor:
    """``workers`` spawned processes with ``cores // workers`` torch threads each (more threads
    than cores make small models many times slower), or this process for ``workers=1``."""
    if workers <= 1:
        return _InProcess()
    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_set_threads,
        initargs=(_worker_threads(workers),),
    )


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def environment() -> dict[str, str]:
    """What a timing depends on: torch and Python versions, CPU, cores, threads, device."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": str(_available_cpus()),
        "threads": str(torch.get_num_threads()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo",
    workers: int | None = None,
    echo: Echo = print,
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
    """
    from torchkd.config import build_loaders, build_model, load_recipe
    from torchkd.train import evaluate

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipes = {arm.key: demo_recipe_path(arm.recipe) for arm in ARMS}
    teacher_recipe = _teacher_recipe(quick)
    teacher_weights = teacher_cache_path(quick)
    cached = teacher_weights.is_file()
    runs_total = len(ARMS) * seeds
    if workers is None:
        workers = min(_available_cpus(), runs_total + (not cached))
    worker_text = (
        f"{workers} processes x {_worker_threads(workers)} thread(s)"
        if workers > 1
        else f"in-process, {torch.get_num_threads()} thread(s)"
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
                f"  {run.arm:<11} seed {run.seed}: test top-1 {100 * run.test['top1']:5.1f} %"
                f"  ({run.seconds:.0f} s)"
            )

    def submit(executor: concurrent.futures.Executor, arm: Arm) -> list[Future[ArmRun]]:
        overrides = _arm_overrides(recipes[arm.key], quick, teacher_weights)
        return [
            executor.submit(
                train_arm, arm.key, seed, overrides, str(out / arm.key / f"seed{seed}"), not quick
            )
            for seed in range(seeds)
        ]

    teacher_seconds = 0.0
    with _executor(workers) as executor:
        try:
            if not cached:
                teacher_job = executor.submit(train_teacher, quick, str(out / "teacher"))
            baseline_jobs = submit(executor, ARMS[0])  # needs no teacher: runs alongside it
            # meanwhile, generate (and cache) the transfer set once for the label-free runs
            label_free = load_recipe(
                recipes["label_free"], _arm_overrides(recipes["label_free"], quick, None)
            )
            loaders = build_loaders(label_free.data)
            if not cached:
                teacher_weights, teacher_seconds = teacher_job.result()
            distill_jobs = [job for arm in reversed(ARMS[1:]) for job in submit(executor, arm)]
            teacher = build_model(
                label_free.teacher_configs[0].model_copy(
                    update={"checkpoint": str(teacher_weights)}
                ),
                "teacher",
            )
            teacher_test = evaluate(teacher, loaders.test)
            collect(baseline_jobs + distill_jobs)
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise
    result = DemoResult(
        teacher_test=teacher_test,
        teacher_description=_describe_model(teacher_recipe.student),
        teacher_cached=cached,
        teacher_seconds=teacher_seconds,
        runs=sorted(runs, key=lambda run: (run.arm, run.seed)),
        seeds=list(range(seeds)),
        student_description=_describe_model(label_free.student),
        transfer_samples=len(loaders.train.dataset),
        environment={**environment(), "threads": worker_text},
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_demo_report(result, out, quick=quick)
    return result


# ----------------------------------------------------------------------------------- report


def _plot_test_top1(result: DemoResult, path: Path) -> None:
    """Each seed's test top-1 per arm (dots), the mean (bar) and the teacher (dashed)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    for position, arm in enumerate(ARMS):
        values = result.top1(arm.key)
        axis.bar(position, statistics.fmean(values), color="0.85")
        axis.scatter([position] * len(values), values, color="C0", zorder=3)
    axis.axhline(100 * result.teacher_test["top1"], color="C3", linestyle="--", label="teacher")
    axis.set_xticks(range(len(ARMS)), [arm.label.replace(" (", "\n(", 1) for arm in ARMS])
    axis.tick_params(axis="x", labelsize=7)
    axis.set_ylabel("test top-1 (%)")
    lowest = min(min(result.top1(arm.key)) for arm in ARMS)
    axis.set_ylim(max(0.0, lowest - 10), 100)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_val_top1(result: DemoResult, path: Path) -> None:
    """Validation top-1 after every epoch (mean over seeds) per arm, by optimizer step."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    for arm in ARMS:
        curves = [run.val_curve for run in result.runs if run.arm == arm.key]
        length = min(len(curve) for curve in curves)
        if length == 0:
            continue
        steps = [step for step, _ in curves[0][:length]]
        mean = [100 * statistics.fmean(curve[i][1] for curve in curves) for i in range(length)]
        axis.plot(steps, mean, label=arm.label)
    axis.axhline(
        100 * result.teacher_test["top1"], color="C3", linestyle="--", label="teacher (test)"
    )
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("validation top-1 (%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_demo_report(result: DemoResult, out: Path, quick: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/plots/{test_top1,val_top1}.png``; returns the path."""
    import matplotlib

    from torchkd.report import format_results_table

    matplotlib.use("Agg")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _plot_test_top1(result, plots / "test_top1.png")
    _plot_val_top1(result, plots / "val_top1.png")
    labels = {arm.key: arm.label for arm in ARMS}
    metric_rows = [
        {"arm": labels[run.arm], **{k: v for k, v in run.test.items() if k != "samples"}}
        for arm in ARMS
        for run in result.runs
        if run.arm == arm.key
    ]
    environment = ", ".join(f"{key} {value}" for key, value in result.environment.items())
    quick_note = ["", "**--quick run: a few optimizer steps per run; not a result.**"]
    run_links = [
        f"- {labels[run.arm]}, seed {run.seed}: `{run.arm}/seed{run.seed}/` ({run.seconds:.0f} s)"
        + ("" if quick else f", [report]({run.arm}/seed{run.seed}/report.md)")
        for run in result.runs
    ]
    lines = [
        "# torchkd demo: knowledge distillation on MNIST-1D",
        *(quick_note if quick else []),
        "",
        f"Teacher {result.teacher_description} → student {result.student_description}, "
        f"{len(result.seeds)} seeds, test top-1 on the 1000 MNIST-1D test samples. "
        f"Arm (b) never sees a label: it learns from the teacher's soft targets on "
        f"{result.transfer_samples} fresh unlabeled MNIST-1D samples. "
        "Gains are the mean ± std of per-seed differences to the baseline (same seed = same "
        "initialisation and shuffle order).",
        "",
        summary_markdown(result),
        "",
        "## Per seed (test top-1, %)",
        "",
        per_seed_markdown(result),
        "",
        "## All test metrics (mean ± std over seeds)",
        "",
        "top1 and agreement (with the teacher) in percent; nll and ece (15 bins) as numbers.",
        "",
        format_results_table(
            metric_rows, group_key="arm", metrics=["top1", "nll", "ece", "agreement"]
        ),
        "",
        "## Plots",
        "",
        "![test top-1 per seed](plots/test_top1.png)",
        "",
        "![validation top-1 during training](plots/val_top1.png)",
        "",
        "## Runs",
        "",
        "Recipes: `torchkd/configs/demo/` (teacher.yaml, baseline.yaml, kd.yaml, "
        "label_free.yaml). Each run directory holds its resolved `config.yaml`, "
        "`metrics.jsonl`, TensorBoard events and checkpoints (and, except with --quick, "
        "its own `report.md`):",
        "",
        *run_links,
        "",
        f"Wall time {result.seconds:.0f} s ({environment}). Command: `torchkd demo --seeds "
        f"{len(result.seeds)}{' --quick' if quick else ''} --out {out}`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
