"""The demo's report: the summary table (mean ± std over seeds, paired gains, wins), the
per-seed table, plots and ``OUT/report.md``."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchkd._extras import require
from torchkd.demo.arms import ARMS, ArmRun

__all__ = [
    "DemoResult",
    "mean_std",
    "paired_gain",
    "per_seed_markdown",
    "results_markdown",
    "summary_markdown",
    "summary_text",
    "write_demo_report",
]


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
        teacher_weights: the cached teacher weights the distilled arms read.
        arm_terms: each arm's loss terms as its recipe resolves them (e.g.
            ``"hinton(temperature=8.0, alpha=0.9)"``).
        command: the command line that reproduces this run.
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
    teacher_weights: str = ""
    arm_terms: dict[str, str] = field(default_factory=dict)
    command: str = ""

    def top1(self, arm: str) -> list[float]:
        """Test top-1 (percent) of ``arm``, in seed order."""
        by_seed = {run.seed: run for run in self.runs if run.arm == arm}
        return [by_seed[seed].test["top1"] for seed in self.seeds]

    def table(self) -> str:
        """The summary table (plain text, fixed width)."""
        return summary_text(self)


def mean_std(values: Sequence[float], signed: bool = False, digits: int = 1) -> str:
    """``"mean ± sample std"`` of ``values`` with ``digits`` decimals (the mean alone for one
    value); ``signed`` writes the mean's sign.

    Example:
        >>> mean_std([1.0, 2.0, 4.0], signed=True, digits=2)
        '+2.33 ± 1.53'
    """
    sign = "+" if signed else ""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:{sign}.{digits}f}"
    return f"{mean:{sign}.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired_gain(
    arm_values: Sequence[float],
    baseline_values: Sequence[float],
    higher_is_better: bool = True,
    digits: int = 1,
) -> tuple[str, int]:
    """Mean ± std of the per-seed differences ``arm - baseline`` and how many seeds the arm
    wins (a positive difference, or a negative one when lower is better, e.g. perplexity).

    Example:
        >>> paired_gain([80.0, 82.0, 81.0], [78.0, 79.0, 81.5])
        ('+1.5 ± 1.8', 2)
        >>> paired_gain([20.0, 22.0], [21.0, 24.0], higher_is_better=False)
        ('-1.5 ± 0.7', 2)
    """
    differences = [a - b for a, b in zip(arm_values, baseline_values, strict=True)]
    wins = sum(d > 0 if higher_is_better else d < 0 for d in differences)
    return mean_std(differences, signed=True, digits=digits), wins


SUMMARY_HEADER = ("", "test top-1 (%)", "gain vs baseline (paired)", "better than baseline")


def summary_cells(result: DemoResult, timing: bool = True) -> list[tuple[str, str, str, str]]:
    """Rows of the summary table: teacher, baseline, (a), (b); ``timing`` says whether the
    teacher was cached or trained (and in how long) in its row."""
    source = "cached" if result.teacher_cached else f"trained in {result.teacher_seconds:.0f} s"
    rows = [
        (
            f"teacher {result.teacher_description}" + (f", {source}" if timing else ""),
            f"{result.teacher_test['top1']:.1f}",
            "",
            "",
        )
    ]
    baseline = result.top1("baseline")
    for arm in ARMS:
        values = result.top1(arm.key)
        if arm.key == "baseline":
            rows.append((arm.label, mean_std(values), "", ""))
            continue
        gain, wins = paired_gain(values, baseline)
        rows.append((arm.label, mean_std(values), gain, f"{wins}/{len(result.seeds)} seeds"))
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
    """The summary table as markdown: measured numbers only (no wall times), so that the same
    run gives the same table (``OUT/results.md``; published, ``benchmarks/results/demo.md``
    and the README hold it)."""
    rows = [SUMMARY_HEADER, ("---",) * len(SUMMARY_HEADER), *summary_cells(result, timing=False)]
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


def _environment_text(result: DemoResult) -> str:
    return ", ".join(f"{key} {value}" for key, value in result.environment.items())


def results_markdown(result: DemoResult) -> str:
    """``OUT/results.md`` (published: ``benchmarks/results/demo.md``): the summary table with
    the command, the environment, the wall time, the per-seed numbers and each arm's loss, as
    this run measured them."""
    source = (
        f"reused from the cache (`{result.teacher_weights}`)"
        if result.teacher_cached
        else f"trained in this run ({result.teacher_seconds:.0f} s), then cached as "
        f"`{result.teacher_weights}`"
    )
    terms = [f"- {arm.label}: `{result.arm_terms.get(arm.key, '?')}`" for arm in ARMS]
    return "\n".join(
        [
            "# torchkd demo: the numbers `make demo` prints",
            "",
            "Written by `torchkd demo` to OUT/results.md at the end of its run "
            "(`torchkd/demo/report.py`); `torchkd demo --publish` also writes it to "
            "`benchmarks/results/demo.md`, whose table is the README's demo table "
            "(`tests/demo/test_readme_table.py` checks it). "
            "Test top-1 on the 1000 MNIST-1D test samples; gains are the mean ± std of the "
            "per-seed differences to the baseline (same seed = same initialisation and shuffle "
            "order), wins count the seeds where the arm beats the baseline.",
            "",
            f"Command: `{result.command}`. Teacher {result.teacher_description}: {source}. "
            f"Student {result.student_description}; arm (b) learns from "
            f"{result.transfer_samples} fresh unlabeled MNIST-1D samples.",
            "",
            f"Environment: {_environment_text(result)}. Wall time {result.seconds:.0f} s "
            "(a shared machine: times are inflated; the accuracies do not depend on them).",
            "",
            summary_markdown(result),
            "",
            "Per seed (test top-1, %):",
            "",
            per_seed_markdown(result),
            "",
            "Loss terms (from `torchkd/configs/demo/`):",
            "",
            *terms,
            "",
        ]
    )


# ---------------------------------------------------------------------------------- running


def _plot_test_top1(result: DemoResult, path: Path) -> None:
    """Each seed's test top-1 per arm (dots), the mean (bar) and the teacher (dashed)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    for position, arm in enumerate(ARMS):
        values = result.top1(arm.key)
        axis.bar(position, statistics.fmean(values), color="0.85")
        axis.scatter([position] * len(values), values, color="C0", zorder=3)
    axis.axhline(result.teacher_test["top1"], color="C3", linestyle="--", label="teacher")
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
        mean = [statistics.fmean(curve[i][1] for curve in curves) for i in range(length)]
        axis.plot(steps, mean, label=arm.label)
    axis.axhline(result.teacher_test["top1"], color="C3", linestyle="--", label="teacher (test)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("validation top-1 (%)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_demo_report(result: DemoResult, out: Path, quick: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/plots/{test_top1,val_top1}.png``; returns the path."""
    from torchkd.report import format_results_table

    matplotlib = require("matplotlib", "demo", "the demo report")
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
    environment = _environment_text(result)
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
        f"Wall time {result.seconds:.0f} s ({environment}). Command: `{result.command}`; "
        + (
            "the teacher was reused from the cache."
            if result.teacher_cached
            else f"the teacher was trained in this run ({result.teacher_seconds:.0f} s)."
        ),
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
