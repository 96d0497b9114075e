"""The cross-modal demo's report: the table (mean ± std over seeds), the paired deltas of
``kd`` with 95% intervals, ``OUT/report.md`` and the results page (``OUT/results.md``;
published: ``benchmarks/results/demo_crossmodal.md``)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkd._files import atomic_write
from torchkd.demo.crossmodal.arms import ARMS
from torchkd.demo.report import mean_std

__all__ = ["METRICS", "CrossModalResult", "RunScores", "paired_interval", "results_markdown"]

METRICS = (("mrr10", "MRR@10"), ("r1", "R@1"), ("r10", "R@10"))


@dataclass
class RunScores:
    """One arm's retrieval scores at one seed (fractions in [0, 1]) and its job's wall time."""

    arm: str
    seed: int
    mrr10: float
    r1: float
    r10: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CrossModalResult:
    """Everything ``torchkd demo crossmodal`` measured.

    Attributes:
        scores: one :class:`RunScores` per arm and seed.
        seeds: the seeds.
        held_out: held-out pairs (their modules are not in the training split).
        train_pairs: training pairs per run.
        student: the student's recipe kwargs.
        terms: the kd recipe's loss terms.
        epochs: training epochs of both trained arms.
        environment: versions, CPU, threads.
        command: the command line of this run.
        seconds: wall time of the demo.
        report_path: ``OUT/report.md``.
    """

    scores: list[RunScores]
    seeds: list[int]
    held_out: int
    train_pairs: int
    student: dict[str, Any]
    terms: list[dict[str, Any]]
    epochs: int
    environment: dict[str, str]
    command: str
    seconds: float = 0.0
    report_path: Path | None = None

    def values(self, arm: str, metric: str) -> list[float]:
        """``metric`` of ``arm`` in seed order."""
        runs = sorted((s for s in self.scores if s.arm == arm), key=lambda score: score.seed)
        return [getattr(score, metric) for score in runs]


def paired_interval(first: list[float], second: list[float]) -> tuple[float, float, int]:
    """Mean of the per-seed differences ``first - second``, the half-width of its 95%
    Student-t interval (:math:`t_{0.975, n-1}\\, s / \\sqrt n`; NaN for one seed) and the number
    of seeds where ``first`` is higher.

    Example:
        >>> mean, half, wins = paired_interval([0.5, 0.6, 0.7], [0.4, 0.4, 0.6])
        >>> round(mean, 4), round(half, 4), wins
        (0.1333, 0.1434, 3)
    """
    differences = [a - b for a, b in zip(first, second, strict=True)]
    mean = statistics.fmean(differences)
    wins = sum(d > 0 for d in differences)
    if len(differences) < 2:
        return mean, math.nan, wins
    from scipy.stats import t

    spread = statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, float(t.ppf(0.975, len(differences) - 1)) * spread, wins


def _percent(values: list[float]) -> str:
    return mean_std([100 * value for value in values], digits=1)


def summary_markdown(result: CrossModalResult) -> str:
    """The table: one row per arm (mean ± sample std over seeds, percent)."""
    lines = [
        "| model (code -> held-out docstrings) | runs | MRR@10 (%) | R@1 (%) | R@10 (%) | job s |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        if not result.values(arm.key, "mrr10"):
            continue
        cells = [_percent(result.values(arm.key, metric)) for metric, _ in METRICS]
        seconds = statistics.fmean(result.values(arm.key, "seconds"))
        runs = len(result.values(arm.key, "mrr10"))
        lines.append(f"| {arm.label} | {runs} | {' | '.join(cells)} | {seconds:.0f} |")
    return "\n".join(lines)


def deltas_markdown(result: CrossModalResult) -> str:
    """``kd`` minus each seeded arm, paired by seed: mean, 95% interval, seeds won."""
    lines = [
        "| kd minus | " + " | ".join(f"Δ {name} (points, 95% CI)" for _, name in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for other in ("contrastive", "untrained"):
        if not result.values(other, "mrr10"):
            continue
        cells = []
        for metric, _ in METRICS:
            kd = [100 * value for value in result.values("kd", metric)]
            mean, half, wins = paired_interval(kd, [100 * v for v in result.values(other, metric)])
            interval = "" if math.isnan(half) else f" ± {half:.1f}"
            cells.append(f"{mean:+.1f}{interval} ({wins}/{len(kd)} seeds)")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _terms_text(terms: list[dict[str, Any]]) -> str:
    parts = []
    for term in terms:
        arguments = ", ".join(f"{key}={value}" for key, value in term["loss_kwargs"].items())
        parts.append(f"{term['weight']} x {term['loss']}({arguments})")
    return " + ".join(parts)


def _setting_text(result: CrossModalResult) -> str:
    env = result.environment
    return (
        f"torch {env['torch']}, Python {env['python']}, {env['cpu']}, {env['cores']} cores, "
        f"{env['threads']}, {env['device']}"
    )


def _description(result: CrossModalResult) -> str:
    student = result.student
    return (
        f"Code search on the Python {result.environment['python']} standard library: for each "
        f"of {result.held_out} held-out functions (modules no training function comes from), "
        "its code without the docstring ranks the held-out docstring summaries by cosine "
        "similarity; MRR@10 and recall@1/10 of its own docstring. The docstrings are "
        "embedded by the teacher, all-MiniLM-L6-v2, except for the contrastive arm, which "
        "ranks them with its own docstring encoder (the only space its code embeddings "
        f"share). Student: {student.get('layers')}-layer, {student.get('width')}-wide "
        f"transformer over a {student.get('vocab_size')}-token BPE of the training code and "
        f"docstrings, projected to 384; trained {result.epochs} epochs on "
        f"{result.train_pairs} pairs, no labels. kd: {_terms_text(result.terms)} against "
        "the teacher's docstring embedding (computed once per run and cached: the teacher is "
        "frozen and its inputs fixed; the batch entry `teacher_inputs` holds it, the student "
        "reads `inputs`). contrastive: the same student, loader, optimizer and schedule with a "
        "docstring encoder of its size trained with it by symmetric InfoNCE (τ = 0.05), no "
        "teacher. Mean ± sample std over seeds; deltas paired by seed (the same initial "
        "student and batch order), 95% Student-t intervals; job s = mean wall time of a job "
        "(training included; the teacher's embeddings are computed before the jobs, within "
        "the wall time)."
    )


def results_markdown(result: CrossModalResult) -> str:
    """``OUT/results.md``: the tables, command, environment, wall time."""
    return "\n".join(
        [
            "# torchkd demo crossmodal: docstring teacher -> code student (code search)",
            "",
            f"Command: `{result.command}` (wall time {result.seconds:.0f} s).",
            f"Environment: {_setting_text(result)}.",
            "",
            _description(result),
            "",
            summary_markdown(result),
            "",
            deltas_markdown(result),
            "",
        ]
    )


def write_report(result: CrossModalResult, out: Path, quick: bool = False) -> Path:
    """Write ``out/report.md`` (the tables and every run); returns its path."""
    per_run = [
        f"| {score.arm} | {score.seed} | {100 * score.mrr10:.1f} | {100 * score.r1:.1f} | "
        f"{100 * score.r10:.1f} | {score.seconds:.0f} |"
        for score in result.scores
    ]
    lines = [
        "# torchkd demo crossmodal: cross-modal distillation for code search",
        *(["", "**--quick run: a few steps on a few pairs; not a result.**"] if quick else []),
        "",
        _description(result),
        "",
        summary_markdown(result),
        "",
        deltas_markdown(result),
        "",
        "## Per run",
        "",
        "| arm | seed | MRR@10 (%) | R@1 (%) | R@10 (%) | job s |",
        "|---|---|---|---|---|---|",
        *per_run,
        "",
        "kd runs: `kd/seed<k>/` (config.yaml, metrics.jsonl, report.md, student.safetensors).",
        "",
        f"Wall time {result.seconds:.0f} s ({_setting_text(result)}). Command: `{result.command}`.",
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines).encode()
    return atomic_write(out / "report.md", lambda stream: stream.write(text))
