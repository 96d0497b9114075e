"""The language-model demo's report: the summary table (perplexity and top-1 agreement with the
teacher, mean ± std over seeds, paired gains against the student alone with wins, tokens/s),
the per-seed table, plots, ``OUT/report.md`` and ``OUT/results.md`` (published:
``benchmarks/results/demo_lm.md``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkd._extras import require
from torchkd.demo.arms import ArmRun
from torchkd.demo.lm.arms import LM_ARMS
from torchkd.demo.report import mean_std, paired_gain

__all__ = [
    "SUMMARY_HEADER",
    "LMDemoResult",
    "lm_results_markdown",
    "lm_summary_markdown",
    "lm_summary_text",
    "summary_cells",
    "write_lm_report",
]

BASELINE = "baseline"


@dataclass
class LMDemoResult:
    """Everything ``torchkd demo lm`` measured.

    Attributes:
        teacher_test: the teacher's test metrics (:func:`torchkd.demo.lm.metrics.evaluate_lm`).
        teacher_description: e.g. ``"llama 6 layers x 256 (7.2 M parameters)"``.
        student_description: the same for the student.
        teacher_cached: the teacher's weights came from the cache (not trained in this run).
        teacher_seconds: time spent training the teacher (0 when cached).
        runs: one :class:`~torchkd.demo.arms.ArmRun` per arm and seed (test metrics from
            :func:`~torchkd.demo.lm.metrics.evaluate_lm`).
        seeds: the seeds used.
        corpus: what the data was: files and tokens per split, vocabulary size, window length.
        cache: the top-k cache's size and error as ``torchkd cache-teacher`` measured them
            (``k``, ``bytes_per_token``, ``loss_relative_error``, ``grad_relative_error``, ...).
        seconds: wall time of the whole demo.
        report_path: ``OUT/report.md``.
        environment: torch and Python versions, CPU, core count, threads.
        teacher_weights: the cached teacher weights the distilled arms read.
        arm_terms: each arm's loss terms as its recipe resolves them.
        command: the command line that reproduces this run.
    """

    teacher_test: dict[str, float]
    teacher_description: str
    student_description: str
    teacher_cached: bool
    teacher_seconds: float
    runs: list[ArmRun]
    seeds: list[int]
    corpus: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    report_path: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)
    teacher_weights: str = ""
    arm_terms: dict[str, str] = field(default_factory=dict)
    command: str = ""

    def values(self, arm: str, metric: str) -> list[float]:
        """Test ``metric`` of ``arm``, in seed order."""
        by_seed = {run.seed: run for run in self.runs if run.arm == arm}
        return [by_seed[seed].test[metric] for seed in self.seeds]

    def table(self) -> str:
        """The summary table (plain text, fixed width)."""
        return lm_summary_text(self)


SUMMARY_HEADER = (
    "",
    "test perplexity",
    "Δ perplexity (paired)",
    "lower",
    "top-1 agreement (%)",
    "Δ agreement (paired)",
    "higher",
    "tokens/s",
)


def summary_cells(result: LMDemoResult) -> list[tuple[str, ...]]:
    """Rows of the summary table: the teacher, then every arm. The Δ columns are the mean ±
    std over seeds of the per-seed differences to the student alone (same seed: same
    initialisation and batch order); ``lower`` / ``higher`` count the seeds where the arm's
    perplexity is lower / its agreement higher than the student alone's."""
    teacher = result.teacher_test
    rows: list[tuple[str, ...]] = [
        (
            f"teacher {result.teacher_description}",
            f"{teacher['perplexity']:.2f}",
            "",
            "",
            "",
            "",
            "",
            f"{teacher['tokens_per_second']:,.0f}",
        )
    ]
    seeds = len(result.seeds)
    baseline_ppl = result.values(BASELINE, "perplexity")
    baseline_agreement = result.values(BASELINE, "agreement")
    for arm in LM_ARMS:
        perplexity = result.values(arm.key, "perplexity")
        agreement = result.values(arm.key, "agreement")
        speed = f"{statistics.fmean(result.values(arm.key, 'tokens_per_second')):,.0f}"
        if arm.key == BASELINE:
            ppl, agree = mean_std(perplexity, digits=2), mean_std(agreement)
            rows.append((arm.label, ppl, "", "", agree, "", "", speed))
            continue
        ppl_gain, ppl_wins = paired_gain(perplexity, baseline_ppl, higher_is_better=False, digits=2)
        agreement_gain, agreement_wins = paired_gain(agreement, baseline_agreement)
        rows.append(
            (
                arm.label,
                mean_std(perplexity, digits=2),
                ppl_gain,
                f"{ppl_wins}/{seeds}",
                mean_std(agreement),
                agreement_gain,
                f"{agreement_wins}/{seeds}",
                speed,
            )
        )
    return rows


def lm_summary_text(result: LMDemoResult) -> str:
    """The summary table as fixed-width text."""
    rows = [SUMMARY_HEADER, *summary_cells(result)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(SUMMARY_HEADER))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def lm_summary_markdown(result: LMDemoResult) -> str:
    """The summary table as markdown (``benchmarks/results/demo_lm.md`` and the README hold
    it). Every number is measured by the run; tokens/s depend on the machine and its load."""
    rows = [SUMMARY_HEADER, ("---",) * len(SUMMARY_HEADER), *summary_cells(result)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def per_seed_markdown(result: LMDemoResult) -> str:
    """Test perplexity / top-1 agreement (%) per seed and arm, as markdown."""
    lines = [
        "| seed | " + " | ".join(arm.label for arm in LM_ARMS) + " |",
        "|---|" + "---|" * len(LM_ARMS),
    ]
    for position, seed in enumerate(result.seeds):
        cells = [
            f"{result.values(arm.key, 'perplexity')[position]:.2f} / "
            f"{result.values(arm.key, 'agreement')[position]:.1f}"
            for arm in LM_ARMS
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _environment_text(result: LMDemoResult) -> str:
    return ", ".join(f"{key} {value}" for key, value in result.environment.items())


def _setup_text(result: LMDemoResult) -> str:
    corpus = result.corpus
    return (
        f"Corpus: source files of the Python {corpus.get('python', '?')} standard library "
        "(tests and site-packages excluded), two disjoint seeded samples: the students' "
        f"{corpus.get('files', '?')} files, split by file into train / val / test "
        f"({corpus.get('split_files', '?')} files; {corpus.get('train_tokens', 0):,} / "
        f"{corpus.get('val_tokens', 0):,} / {corpus.get('test_tokens', 0):,} tokens), and the "
        f"teacher's {corpus.get('teacher_files', '?')} other files "
        f"({corpus.get('teacher_tokens', 0):,} training tokens): the teacher never saw the "
        "students' files. Byte-level BPE tokenizer of "
        f"{corpus.get('vocab_size', '?')} tokens trained on the training files, windows of "
        f"{corpus.get('seq_len', '?')} tokens. Teacher {result.teacher_description}, "
        f"epochs: {corpus.get('teacher_epochs', '?')}; student {result.student_description}, "
        f"epochs: {corpus.get('student_epochs', '?')}; {len(result.seeds)} seeds per arm; "
        "every model is measured on the students' test files."
    )


def _cache_text(result: LMDemoResult) -> str:
    cache = result.cache
    if not cache:
        return "Top-k cache: not measured."
    return (
        f"Top-k cache (`torchkd cache-teacher`, k = {cache['k']}, T = "
        f"{cache['temperature']:g}): {cache['tokens']:,} tokens of the training and "
        "validation splits, "
        f"{cache['bytes_per_token']:.1f} bytes/token on disk; against the dense teacher "
        f"(forward KL, the student at initialization, {cache['error_tokens']:,} tokens) the "
        f"loss relative error is {cache['loss_relative_error']:.2e} and the gradient relative "
        f"error {cache['grad_relative_error']:.2e} (cosine {cache['grad_cosine']:.4f})."
    )


def _terms_lines(result: LMDemoResult) -> list[str]:
    return [f"- {arm.label}: `{result.arm_terms.get(arm.key, '?')}`" for arm in LM_ARMS]


def lm_results_markdown(result: LMDemoResult) -> str:
    """``OUT/results.md`` (published: ``benchmarks/results/demo_lm.md``): the summary table
    with the command, set-up, environment, wall time, per-seed numbers, the cache's size and
    error and each arm's loss."""
    source = (
        f"reused from the cache (`{result.teacher_weights}`)"
        if result.teacher_cached
        else f"trained in this run ({result.teacher_seconds:.0f} s), then cached as "
        f"`{result.teacher_weights}`"
    )
    return "\n".join(
        [
            "# torchkd demo lm: the numbers `make demo-lm` prints",
            "",
            "Written by `torchkd demo lm` to OUT/results.md at the end of its run "
            "(`torchkd/demo/lm/report.py`); `torchkd demo lm --publish` also writes it to "
            "`benchmarks/results/demo_lm.md`, whose table is the README's language-model demo "
            "table (`tests/demo/test_lm.py` checks it). Perplexity and top-1 agreement with the "
            "teacher on the held-out test files; Δ columns are the mean ± std of the per-seed "
            "differences to the student alone (same seed = same initialisation and batch "
            "order); `lower` / `higher` count the seeds where the arm beats the student alone.",
            "",
            f"Command: `{result.command}`. Teacher {source}.",
            "",
            _setup_text(result),
            "",
            f"Environment: {_environment_text(result)}. Wall time {result.seconds:.0f} s "
            "(a shared machine: times and tokens/s are inflated by its load; the perplexities "
            "and agreements do not depend on it).",
            "",
            lm_summary_markdown(result),
            "",
            "Per seed (test perplexity / top-1 agreement %):",
            "",
            per_seed_markdown(result),
            "",
            _cache_text(result),
            "",
            "Loss terms (from `torchkd/configs/demo_lm/`):",
            "",
            *_terms_lines(result),
            "",
        ]
    )


# ---------------------------------------------------------------------------------- plots


def _plot_metric(result: LMDemoResult, metric: str, label: str, path: Path) -> None:
    """Each seed's test ``metric`` per arm (dots), the mean (bar) and the teacher (dashed,
    when it has the metric)."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.4))
    for position, arm in enumerate(LM_ARMS):
        values = result.values(arm.key, metric)
        axis.bar(position, statistics.fmean(values), color="0.85")
        axis.scatter([position] * len(values), values, color="C0", zorder=3)
    if metric in result.teacher_test and metric != "agreement":
        axis.axhline(result.teacher_test[metric], color="C3", linestyle="--", label="teacher")
        axis.legend(loc="best")
    axis.set_xticks(range(len(LM_ARMS)), [arm.label.replace(" ", "\n", 1) for arm in LM_ARMS])
    axis.tick_params(axis="x", labelsize=7)
    axis.set_ylabel(label)
    everything = [value for arm in LM_ARMS for value in result.values(arm.key, metric)]
    spread = max(everything) - min(everything)
    axis.set_ylim(min(everything) - spread - 1e-6, max(everything) + spread + 1e-6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_lm_report(result: LMDemoResult, out: Path, quick: bool = False) -> Path:
    """Write ``out/report.md`` and ``out/plots/{perplexity,agreement}.png``; returns the path."""
    matplotlib = require("matplotlib", "demo", "the demo report")
    matplotlib.use("Agg")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    _plot_metric(result, "perplexity", "test perplexity", plots / "perplexity.png")
    _plot_metric(
        result, "agreement", "top-1 agreement with the teacher (%)", plots / "agreement.png"
    )
    labels = {arm.key: arm.label for arm in LM_ARMS}
    run_links = [
        f"- {labels[run.arm]}, seed {run.seed}: `{run.arm}/seed{run.seed}/` "
        f"({run.seconds:.0f} s)"
        + ("" if quick else f", [report]({run.arm}/seed{run.seed}/report.md)")
        for run in result.runs
    ]
    teacher = (
        "the teacher was reused from the cache"
        if result.teacher_cached
        else f"the teacher was trained in this run ({result.teacher_seconds:.0f} s)"
    )
    lines = [
        "# torchkd demo lm: distilling a code-completion language model",
        *(["", "**--quick run: a few optimizer steps per run; not a result.**"] if quick else []),
        "",
        _setup_text(result),
        "",
        lm_summary_markdown(result),
        "",
        "Δ columns: mean ± std of the per-seed differences to the student alone; `lower` / "
        "`higher`: seeds where the arm's perplexity is lower / its agreement higher.",
        "",
        "## Per seed (test perplexity / top-1 agreement %)",
        "",
        per_seed_markdown(result),
        "",
        "## The top-k teacher cache",
        "",
        _cache_text(result),
        "",
        "## Loss terms",
        "",
        *_terms_lines(result),
        "",
        "## Plots",
        "",
        "![test perplexity per seed](plots/perplexity.png)",
        "",
        "![top-1 agreement with the teacher per seed](plots/agreement.png)",
        "",
        "## Runs",
        "",
        "Recipes: `torchkd/configs/demo_lm/`. Each run directory holds its resolved "
        "`config.yaml`, `metrics.jsonl`, TensorBoard events and checkpoints:",
        "",
        *run_links,
        "",
        f"Wall time {result.seconds:.0f} s ({_environment_text(result)}). Command: "
        f"`{result.command}`; {teacher}.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
