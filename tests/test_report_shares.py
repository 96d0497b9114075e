"""report.md shows the teacher's own score first, and each term's weighted value and share of
the loss (a term that dwarfs the others is visible)."""

from __future__ import annotations

from pathlib import Path

from torchkd.report import write_report


def test_the_report_leads_with_the_teachers_score_and_shows_weighted_shares(
    tmp_path: Path,
) -> None:
    history = [
        {"epoch": 1, "step": 2, "train": {"loss": 4.0}, "val": {"top1": 30.0, "teacher_top1": 9.1}}
    ]
    # the LM run: a hint of 24.5 at weight 0.1 against KD 1.58 at weight 1
    steps = [
        {"kind": "step", "step": 1, "terms": {"kd": 9.0}, "weights": {"kd": 1.0}},
        {
            "kind": "step",
            "step": 2,
            "terms": {"kd": 1.58, "hint": 24.5},
            "weights": {"kd": 1.0, "hint": 0.1, "temperature/kd": 4.0},
        },
    ]
    text = write_report(tmp_path, history, steps=steps).read_text()
    teacher = "**Teacher's own validation top-1: 9.10 %**"
    assert teacher in text and text.index(teacher) < text.index("## Results")
    assert "## Weighted loss terms (step 2)" in text
    hint, kd = 24.5 * 0.1, 1.58 * 1.0
    assert f"| hint | 24.5 | 0.1 | 2.45 | {100 * hint / (hint + kd):.1f} % |" in text
    assert f"| kd | 1.58 | 1 | 1.58 | {100 * kd / (hint + kd):.1f} % |" in text
    assert "temperature/kd |" not in text  # a temperature is not a term


def test_a_token_level_report_shows_the_teachers_perplexity_beside_the_students(
    tmp_path: Path,
) -> None:
    val = {"top1": 21.0, "perplexity": 48.25, "teacher_top1": 0.4, "teacher_perplexity": 1043.0}
    history = [{"epoch": 1, "step": 2, "train": {"loss": 4.0}, "val": val}]
    text = write_report(tmp_path, history, steps=[]).read_text()
    teacher = "**Teacher's own validation top-1: 0.40 %, perplexity 1043.0000 (student 48.2500)**"
    assert teacher in text and text.index(teacher) < text.index("## Results")
    assert "| | top1 | perplexity | teacher_perplexity | teacher_top1 |" in text
    assert "| final (epoch 1) | 21.00 | 48.2500 | 1043.0000 | 0.40 |" in text
