"""The embeddings demo's report: the table (mean ± std over seeds), a plot, ``OUT/report.md``
and the results page (``OUT/results.md``; published: ``benchmarks/results/demo_embeddings.md``)."""

from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkd._extras import require
from torchkd._files import atomic_write
from torchkd.demo.embeddings.arms import ARMS

__all__ = ["EmbeddingsResult", "RunScores", "results_markdown", "summary_markdown", "write_report"]


@dataclass
class RunScores:
    """One student's scores against the teacher on the held-out sentences.

    Attributes:
        arm: the arm's key.
        seed: its seed.
        spearman: Spearman's rho between student and teacher cosine similarities (all pairs).
        overlap: mean top-10 nearest-neighbour overlap, in [0, 1].
        seconds: the job's wall time (training included).
        cached: the trained weights came from the cache.
        history: the training run's epoch records.
    """

    arm: str
    seed: int
    spearman: float
    overlap: float
    seconds: float
    cached: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EmbeddingsResult:
    """Everything ``torchkd demo embeddings`` measured.

    Attributes:
        scores: one :class:`RunScores` per arm and seed.
        seeds: the seeds.
        speed: sentences per second of ``"teacher"`` and ``"student"`` (one thread).
        held_out: number of held-out sentences.
        train_sentences: training sentences per distillation run.
        student: the student's recipe kwargs.
        terms: the recipe's loss terms.
        environment: versions, CPU, threads.
        command: the command line of this run.
        seconds: wall time of the demo.
        report_path: ``OUT/report.md``.
    """

    scores: list[RunScores]
    seeds: list[int]
    speed: dict[str, float]
    held_out: int
    train_sentences: int | None
    student: dict[str, Any]
    terms: list[dict[str, Any]]
    environment: dict[str, str]
    command: str
    seconds: float = 0.0
    report_path: Path | None = None

    def values(self, arm: str, metric: str) -> list[float]:
        return [getattr(score, metric) for score in self.scores if score.arm == arm]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.4f}"


def summary_markdown(result: EmbeddingsResult) -> str:
    """The table: one row per arm (mean ± sample std over seeds) and the teacher."""
    speedup = result.speed["student"] / result.speed["teacher"]
    layers = len(result.student.get("layers", []))
    lines = [
        "| model | runs | Spearman ρ (pair cosines) | top-10 NN overlap | sentences/s |",
        "|---|---|---|---|---|",
        f"| teacher all-MiniLM-L6-v2 (6 layers) | - | 1 | 1 | {result.speed['teacher']:.0f} |",
    ]
    for arm in ARMS:
        rho, overlap = result.values(arm.key, "spearman"), result.values(arm.key, "overlap")
        if not rho:
            continue
        lines.append(
            f"| {layers}-layer student: {arm.label} | {len(rho)} | {_mean_std(rho)} | "
            f"{_mean_std(overlap)} | {result.speed['student']:.0f} ({speedup:.2f}x) |"
        )
    return "\n".join(lines)


def _terms_text(terms: list[dict[str, Any]]) -> str:
    parts = []
    for term in terms:
        where = "" if term["student"] == "logits" else f" on `{term['student']}`"
        arguments = ", ".join(f"{key}={value}" for key, value in term["loss_kwargs"].items())
        parts.append(f"{term['weight']} x {term['loss']}({arguments}){where}")
    return " + ".join(parts)


def _setting_text(result: EmbeddingsResult) -> str:
    env = result.environment
    return (
        f"torch {env['torch']}, Python {env['python']}, {env['cpu']}, {env['cores']} cores, "
        f"{env['threads']}, {env['device']}"
    )


def results_markdown(result: EmbeddingsResult) -> str:
    """``OUT/results.md`` (published: ``benchmarks/results/demo_embeddings.md``): the table,
    command, environment, wall time."""
    return "\n".join(
        [
            "# torchkd demo embeddings: all-MiniLM-L6-v2 -> "
            f"{len(result.student.get('layers', []))}-layer student",
            "",
            f"Command: `{result.command}` (wall time {result.seconds:.0f} s).",
            f"Environment: {_setting_text(result)}.",
            "",
            _description(result),
            "",
            summary_markdown(result),
            "",
        ]
    )


def _description(result: EmbeddingsResult) -> str:
    return (
        f"Held-out: {result.held_out} sentences from documents no training sentence comes "
        f"from. Students: layers {result.student.get('layers')} of the teacher's shape; "
        f"distillation on {result.train_sentences} training sentences with "
        f"{_terms_text(result.terms)}. Spearman ρ between the student's and the teacher's "
        "cosine similarities over all sentence pairs; top-10 NN overlap = mean |NN_s ∩ NN_t| "
        "/ 10; sentences/s on one thread, student and teacher interleaved, median of "
        "repeats (all students share one architecture). Mean ± sample std over seeds; the "
        "truncated teacher does not depend on the seed (one run)."
    )


def _plot(result: EmbeddingsResult, path: Path) -> None:
    """Spearman ρ and NN overlap per arm: bars at the mean, one dot per seed."""
    import matplotlib.pyplot as plt

    arms = [arm for arm in ARMS if result.values(arm.key, "spearman")]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (metric, title) in zip(
        axes,
        (("spearman", "Spearman ρ (pair cosines)"), ("overlap", "top-10 NN overlap")),
        strict=True,
    ):
        for position, arm in enumerate(arms):
            values = result.values(arm.key, metric)
            axis.bar(position, statistics.fmean(values), color="0.85")
            axis.scatter([position] * len(values), values, color="C0", zorder=3)
        axis.axhline(1.0, color="C3", linestyle="--", label="teacher")
        axis.set_xticks(range(len(arms)), [textwrap.fill(arm.label, 16) for arm in arms])
        axis.tick_params(axis="x", labelsize=7)
        axis.set_title(title, fontsize=9)
        axis.set_ylim(min(0.0, min(min(result.values(a.key, metric)) for a in arms)), 1.05)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(result: EmbeddingsResult, out: Path, quick: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/embeddings.png``; returns the report's path."""
    matplotlib = require("matplotlib", "demo", "the demo report")
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    _plot(result, out / "embeddings.png")
    per_run = [
        f"| {score.arm} | {score.seed} | {score.spearman:.4f} | {score.overlap:.4f} | "
        f"{score.seconds:.0f}{' (cached)' if score.cached else ''} |"
        for score in result.scores
    ]
    lines = [
        "# torchkd demo embeddings: distilling all-MiniLM-L6-v2",
        *(["", "**--quick run: a few steps on a few sentences; not a result.**"] if quick else []),
        "",
        _description(result),
        "",
        summary_markdown(result),
        "",
        "![Spearman and NN overlap per arm](embeddings.png)",
        "",
        "## Per run",
        "",
        "| arm | seed | Spearman ρ | NN overlap | job seconds |",
        "|---|---|---|---|---|",
        *per_run,
        "",
        "Distilled runs: `<arm>/seed<k>/` (config.yaml, metrics.jsonl, report.md; the "
        "checkpoints are removed after the student is exported to the torchkd cache).",
        "",
        f"Wall time {result.seconds:.0f} s ({_setting_text(result)}). Command: `{result.command}`.",
        "",
    ]
    path = out / "report.md"
    text = "\n".join(lines).encode()
    return atomic_write(path, lambda stream: stream.write(text))
