"""Reports: report.md with tables and PNG plots; mean ± std comparison tables."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest
from torch import nn

from torchkd.report import format_results_table, loss_curves, parameter_counts, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_history() -> list[dict]:
    return [
        {
            "epoch": epoch,
            "step": 10 * epoch,
            "train": {"loss": 2.0 / epoch, "terms/kd": 1.0 / epoch, "terms/ce": 0.5 / epoch},
            "val": {
                "top1": 50.0 + 10.0 * epoch,
                "nll": 1.5 / epoch,
                "ece": 0.1,
                "agreement": 60.0 + 5.0 * epoch,
                "teacher_top1": 90.0,
                "loss": 2.2 / epoch,
                "terms/kd": 1.1 / epoch,
                "terms/ce": 0.6 / epoch,
            },
        }
        for epoch in (1, 2, 3)
    ]


def synthetic_steps() -> list[dict]:
    return [
        {"kind": "step", "step": step, "lr": 0.1, "weights": {"kd": 0.9 - 0.02 * step, "ce": 0.1}}
        for step in range(1, 31)
    ]


def test_write_report_tables_and_plots(tmp_path: Path) -> None:
    path = write_report(
        tmp_path,
        synthetic_history(),
        steps=synthetic_steps(),
        test_metrics={"top1": 77.0, "nll": 0.9},
        title="kd run",
    )
    text = path.read_text()
    assert text.startswith("# kd run")
    assert "| final (epoch 3) | 80.00 | 0.5000 | 0.1000 | 75.00 | 90.00 | 0.7333 |" in text
    assert "| best val top1 (epoch 3) |" in text
    assert "| test (final model) | 77.00 | 0.9000 | – | – | – | – |" in text
    assert "| 1 | 2.0000 | 60.00 |" in text
    for name in ("losses.png", "schedules.png", "accuracy.png"):
        assert f"(plots/{name})" in text
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG_MAGIC


def test_write_report_reads_metrics_jsonl(tmp_path: Path) -> None:
    records = [{"kind": "epoch", **r} for r in synthetic_history()] + synthetic_steps()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report(tmp_path).read_text()
    assert "| 3 | 0.6667 |" in text
    assert (tmp_path / "plots" / "schedules.png").is_file()


def test_write_report_without_matplotlib_says_which_extra_draws_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if absent
    text = write_report(tmp_path, synthetic_history(), steps=synthetic_steps()).read_text()
    assert "| final (epoch 3) |" in text and "## Epochs" in text
    assert "## Plots\n\nPlots are not drawn: matplotlib is not installed" in text
    assert "pip install 'torchkd[log]'" in text
    assert "![" not in text and not (tmp_path / "plots").exists()


def test_write_report_without_epochs(tmp_path: Path) -> None:
    assert "No epoch finished yet." in write_report(tmp_path, []).read_text()


def test_results_table_mean_and_sample_std() -> None:
    rows = [
        {"method": "baseline", "seed": 0, "top1": 70.0, "nll": 1.0},
        {"method": "kd", "seed": 0, "top1": 80.0, "nll": 0.8},
        {"method": "baseline", "seed": 1, "top1": 74.0, "nll": 1.2},
        {"method": "kd", "seed": 1, "top1": 84.0, "nll": 0.6},
        {"method": "kd", "seed": 2, "top1": 85.0, "nll": 0.7},
    ]
    lines = format_results_table(rows).splitlines()
    assert lines[0] == "| method | top1 | nll | runs |"
    kd_top1 = [80.0, 84.0, 85.0]
    kd_nll = [0.8, 0.6, 0.7]
    assert lines[2] == "| baseline | 72.00 ± 2.83 | 1.1000 ± 0.1414 | 2 |"
    assert lines[3] == (
        f"| kd | {statistics.fmean(kd_top1):.2f} ± {statistics.stdev(kd_top1):.2f} | "
        f"{statistics.fmean(kd_nll):.4f} ± {statistics.stdev(kd_nll):.4f} | 3 |"
    )


def test_results_table_errors() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        format_results_table([])
    with pytest.raises(KeyError, match=r"rows \[1\] have no 'method'"):
        format_results_table([{"method": "a", "top1": 1.0}, {"top1": 0.5}])


def test_loss_curves_are_against_optimizer_steps() -> None:
    steps = [
        {"kind": "step", "step": step, "loss": 1.0 / step, "terms": {"kd": 0.5 / step}}
        for step in range(2, 31, 2)
    ]
    curves = loss_curves(synthetic_history(), steps)
    assert curves["loss"]["train"] == ([s["step"] for s in steps], [s["loss"] for s in steps])
    assert curves["kd"]["train"][0] == list(range(2, 31, 2))
    assert set(curves["ce"]) == {"val"}  # no "ce" in these step records: no train curve
    assert curves["loss"]["val"] == ([10, 20, 30], [2.2, 1.1, 2.2 / 3])
    # without step records: the epoch means, still at each epoch's step
    assert curves["loss"]["train"] != loss_curves(synthetic_history(), [])["loss"]["train"]
    assert loss_curves(synthetic_history(), [])["loss"]["train"][0] == [10, 20, 30]


def test_report_shows_model_sizes_wall_time_and_a_baseline(tmp_path: Path) -> None:
    history = [{**record, "time_s": 1.5} for record in synthetic_history()]
    baseline = tmp_path / "baseline"
    baseline.mkdir()
    record = {"kind": "epoch", "epoch": 4, "step": 40, "val": {"top1": 70.0, "nll": 0.9}}
    (baseline / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    sizes = parameter_counts(nn.Linear(4, 2), [nn.Linear(40, 2)])
    assert sizes == {"student": 10, "teacher": 82}
    text = write_report(tmp_path / "run", history, model_sizes=sizes, baseline=baseline)
    text = text.read_text()
    assert f"| baseline `{baseline}` (final, epoch 4) | 70.00 | 0.9000 | – |" in text
    assert "- wall time: 4.5 s (training and validation, all epochs)" in text
    assert "- student: 10 parameters" in text
    assert "- teacher: 82 parameters (8.2× the student)" in text
    with pytest.raises(FileNotFoundError, match="no epoch records"):
        write_report(tmp_path / "run", history, baseline=tmp_path / "nothing")
