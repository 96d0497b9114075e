"""The cross-tokenizer demo's table and results page (``OUT/results.md``; published:
``benchmarks/results/demo_cross_tokenizer.md``)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchkd.demo.arms import Arm, ArmRun
from torchkd.demo.report import mean_std, paired_gain

__all__ = ["XTOK_ARMS", "XTokResult", "xtok_results_markdown", "xtok_summary_markdown"]

XTOK_ARMS: tuple[Arm, ...] = (
    Arm("baseline", "baseline.yaml", "student alone (cross-entropy)"),
    Arm("uld", "uld.yaml", "CE + 1.5 · ULD"),
    Arm("hybrid", "hybrid_uld.yaml", "CE + 1.5 · hybrid ULD (KL on shared tokens)"),
)
_BASELINE = "baseline"
_HEADER = (
    "",
    "test perplexity (own tokens)",
    "bits per character",
    "Δ bits/char (paired)",
    "lower",
    "Δ perplexity (paired)",
    "lower",
    "tokens/s",
)


@dataclass
class XTokResult:
    """Everything ``torchkd demo cross_tokenizer`` measured.

    Attributes:
        teacher_test: the teacher's metrics on its own tokens of the test files.
        teacher_description: e.g. ``"llama, 6 layers × 256 (4 heads, MLP 688)"``.
        student_description: the same for the student.
        runs: one :class:`~torchkd.demo.arms.ArmRun` per arm and seed.
        seeds: the seeds used.
        setup: vocabulary sizes, shared tokens, test tokens and characters, teacher source.
        arm_terms: each arm's loss terms as its recipe resolves them.
        environment: torch and Python versions, CPU, cores, threads.
        command: the command line that reproduces this run.
        seconds: wall time of the whole demo.
    """

    teacher_test: dict[str, float]
    teacher_description: str
    student_description: str
    runs: list[ArmRun]
    seeds: list[int]
    setup: dict[str, Any] = field(default_factory=dict)
    arm_terms: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    command: str = ""
    seconds: float = 0.0

    def values(self, arm: str, metric: str) -> list[float]:
        """Test ``metric`` of ``arm``, in seed order."""
        by_seed = {run.seed: run for run in self.runs if run.arm == arm}
        return [by_seed[seed].test[metric] for seed in self.seeds]


def _rows(result: XTokResult) -> list[tuple[str, ...]]:
    """The teacher, then every arm; Δ: mean ± std of the per-seed differences to the student
    alone, ``lower``: the seeds where the arm's value is lower."""
    teacher = result.teacher_test
    rows: list[tuple[str, ...]] = [
        (
            f"teacher {result.teacher_description}, its own tokens",
            f"{teacher['perplexity']:.2f}",
            f"{teacher['bpc']:.3f}",
            *("",) * 4,
            f"{teacher['tokens_per_second']:,.0f}",
        )
    ]
    seeds = len(result.seeds)
    base_bpc = result.values(_BASELINE, "bpc")
    base_ppl = result.values(_BASELINE, "perplexity")
    for arm in XTOK_ARMS:
        bpc, ppl = result.values(arm.key, "bpc"), result.values(arm.key, "perplexity")
        speed = f"{statistics.fmean(result.values(arm.key, 'tokens_per_second')):,.0f}"
        cells = [arm.label, mean_std(ppl, digits=2), mean_std(bpc, digits=3)]
        if arm.key == _BASELINE:
            rows.append((*cells, "", "", "", "", speed))
            continue
        bpc_gain, bpc_wins = paired_gain(bpc, base_bpc, higher_is_better=False, digits=3)
        ppl_gain, ppl_wins = paired_gain(ppl, base_ppl, higher_is_better=False, digits=2)
        rows.append(
            (*cells, bpc_gain, f"{bpc_wins}/{seeds}", ppl_gain, f"{ppl_wins}/{seeds}", speed)
        )
    return rows


def xtok_summary_markdown(result: XTokResult) -> str:
    """The summary table as markdown."""
    rows = [_HEADER, ("---",) * len(_HEADER), *_rows(result)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _per_seed_markdown(result: XTokResult) -> str:
    lines = [
        "| seed | " + " | ".join(arm.label for arm in XTOK_ARMS) + " |",
        "|---|" + "---|" * len(XTOK_ARMS),
    ]
    for position, seed in enumerate(result.seeds):
        cells = [
            f"{result.values(arm.key, 'perplexity')[position]:.2f} / "
            f"{result.values(arm.key, 'bpc')[position]:.3f}"
            for arm in XTOK_ARMS
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def xtok_results_markdown(result: XTokResult, quick: bool = False) -> str:
    """``OUT/results.md``: the table with the command, set-up, environment, wall time,
    per-seed numbers and each arm's loss terms."""
    setup = result.setup
    environment = ", ".join(f"{key} {value}" for key, value in result.environment.items())
    return "\n".join(
        [
            "# torchkd demo cross_tokenizer: distilling across tokenizers",
            *(
                ["", "**--quick run: a few optimizer steps per run; not a result.**"]
                if quick
                else []
            ),
            "",
            "Written by `torchkd demo cross_tokenizer` at the end of its run "
            "(`torchkd/demo/cross_tokenizer/`). The LM demo's teacher (`torchkd demo lm`: same "
            f"corpus, its tokenizer of {setup.get('teacher_vocab', '?')} tokens; "
            f"{setup.get('teacher_source', '?')}) distilled into its student with another "
            f"byte-level BPE tokenizer, of {setup.get('student_vocab', '?')} tokens, trained on "
            f"the students' training files only ({setup.get('shared', '?')} token strings "
            "shared by the two vocabularies). Measured on the students' held-out test files "
            f"({setup.get('characters', 0):,} characters: "
            f"{setup.get('student_tokens', 0):,} student tokens, "
            f"{setup.get('teacher_tokens', 0):,} teacher tokens): the perplexity in each "
            "model's own tokens and the bits per character, Σ NLL / (characters · ln 2), "
            "comparable across tokenizers; no agreement with the teacher (the token ids are of "
            "different vocabularies). Δ columns: mean ± std of the per-seed differences to the "
            "student alone (same seed = same initialisation and batch order); `lower`: the "
            "seeds where the arm's value is lower (better).",
            "",
            f"Command: `{result.command}`.",
            "",
            f"Teacher {result.teacher_description}; student {result.student_description}; "
            f"{len(result.seeds)} seeds per arm.",
            "",
            f"Environment: {environment}. Wall time {result.seconds:.0f} s (a shared machine: "
            "times and tokens/s are inflated by its load; perplexities and bits per character "
            "do not depend on it).",
            "",
            xtok_summary_markdown(result),
            "",
            "Per seed (test perplexity in own tokens / bits per character):",
            "",
            _per_seed_markdown(result),
            "",
            "Loss terms (from `torchkd/configs/demo_cross_tokenizer/`):",
            "",
            *[f"- {arm.label}: `{result.arm_terms.get(arm.key, '?')}`" for arm in XTOK_ARMS],
            "",
        ]
    )


def write_xtok_report(result: XTokResult, out: Path, quick: bool) -> Path:
    """``out/report.md``: the results page with a link to every run directory."""
    links = [
        f"- {run.arm}, seed {run.seed}: `{Path(run.run_dir).relative_to(out)}/` "
        f"({run.seconds:.0f} s)"
        for run in result.runs
    ]
    path = out / "report.md"
    path.write_text(
        xtok_results_markdown(result, quick) + "\n## Runs\n\n" + "\n".join(links) + "\n"
    )
    return path
