"""Run reports: ``report.md`` with a results table and PNG plots, and seed-comparison tables.

:func:`write_report` reads a run's history (the epoch records of ``metrics.jsonl``) and step
records and writes ``report.md`` plus ``plots/losses.png`` (train and validation curves of
each loss term), ``plots/schedules.png`` (term weights, temperatures and the learning rate
over training) and ``plots/accuracy.png`` (student vs teacher validation accuracy); the plots
need matplotlib (``pip install 'torchkd[log]'``), and a report without it says so.
:func:`format_results_table` turns per-seed results into a ``mean ± std`` markdown table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd._extras import available
from torchkd.train.logging import read_jsonl, weighted_shares

if TYPE_CHECKING:
    from torch import nn

__all__ = ["format_results_table", "loss_curves", "parameter_counts", "write_report"]

PERCENT_METRICS = ("top1", "teacher_top1", "agreement")
_TABLE_METRICS = (
    "top1",
    "nll",
    "perplexity",
    "teacher_perplexity",
    "ece",
    "agreement",
    "teacher_top1",
    "loss",
)


def _format_value(name: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if name in PERCENT_METRICS:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _mean_std(values: Sequence[float], percent: bool) -> str:
    digits = 2 if percent else 4
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def format_results_table(
    rows: Iterable[Mapping[str, Any]],
    *,
    group_key: str = "method",
    metrics: Sequence[str] | None = None,
    percent_metrics: Sequence[str] = PERCENT_METRICS,
) -> str:
    """A markdown table of ``mean ± std`` (sample std over seeds) per group.

    Args:
        rows: one mapping per run, e.g. ``{"method": "kd", "seed": 0, "top1": 83.0}``.
        group_key: the column that names a group; groups keep their first-seen order.
        metrics: the metric columns (default: every numeric key except ``seed``).
        percent_metrics: metrics in percent (shown with 2 decimals, others with 4).

    Example:
        >>> rows = [{"method": "kd", "top1": 80.0}, {"method": "kd", "top1": 84.0},
        ...         {"method": "ce", "top1": 70.0}]
        >>> print(format_results_table(rows))
        | method | top1 | runs |
        |---|---|---|
        | kd | 82.00 ± 2.83 | 2 |
        | ce | 70.00 | 1 |
    """
    rows = list(rows)
    if not rows:
        raise ValueError("format_results_table needs at least one row")
    missing = [index for index, row in enumerate(rows) if group_key not in row]
    if missing:
        raise KeyError(f"rows {missing} have no {group_key!r} entry")
    if metrics is None:
        metrics = []
        for row in rows:
            for key, value in row.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if numeric and key not in (group_key, "seed") and key not in metrics:
                    metrics.append(key)
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group_key], []).append(row)
    lines = [
        "| " + " | ".join([group_key, *metrics, "runs"]) + " |",
        "|" + "---|" * (len(metrics) + 2),
    ]
    for group, members in groups.items():
        cells = [str(group)]
        for metric in metrics:
            values = [float(m[metric]) for m in members if m.get(metric) is not None]
            cells.append(_mean_std(values, metric in percent_metrics) if values else "–")
        cells.append(str(len(members)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _epoch_table(history: Sequence[Mapping[str, Any]]) -> str:
    columns = [m for m in _TABLE_METRICS if any(m in r.get("val", {}) for r in history)]
    header = ["epoch", "train loss", *(f"val {m}" for m in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in history:
        cells = [str(record["epoch"]), _format_value("loss", record.get("train", {}).get("loss"))]
        cells += [_format_value(m, record.get("val", {}).get(m)) for m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _term_names(history: Sequence[Mapping[str, Any]]) -> list[str]:
    names: list[str] = []
    for record in history:
        for split in ("train", "val"):
            for key in record.get(split, {}):
                if key.startswith("terms/") and key[6:] not in names:
                    names.append(key[6:])
    return names


def _step_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_xlabel("optimizer step")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


Curve = tuple[list[int], list[float]]


def loss_curves(
    history: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Curve]]:
    """``{loss or term: {"train" | "val": (optimizer steps, values)}}`` for the losses plot.

    Against optimizer steps, so a 2-epoch run is a curve, not two points: train values from
    the step records (the epoch means when there are none), validation values at each
    evaluated epoch's step. Missing values are NaN.
    """

    def step_value(record: Mapping[str, Any], name: str) -> Any:
        return record.get("loss") if name == "loss" else record.get("terms", {}).get(name[6:])

    def curve(records: Sequence[Mapping[str, Any]], read: Callable[[Any], Any]) -> Curve:
        values = [read(record) for record in records]
        return [r["step"] for r in records], [math.nan if v is None else v for v in values]

    curves: dict[str, dict[str, Curve]] = {}
    for name in ["loss", *(f"terms/{term}" for term in _term_names(history))]:
        if steps:
            train = curve(steps, lambda record, name=name: step_value(record, name))
        else:
            train = curve(history, lambda record, name=name: record.get("train", {}).get(name))
        val = curve(history, lambda record, name=name: record.get("val", {}).get(name))
        curves[name.removeprefix("terms/")] = {
            split: values
            for split, values in (("train", train), ("val", val))
            if any(math.isfinite(v) for v in values[1])
        }
    return curves


def _plot_losses(
    history: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], path: Path
) -> bool:
    import matplotlib.pyplot as plt

    curves = loss_curves(history, steps)
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for axis, (name, splits) in zip(axes[0], curves.items(), strict=True):
        for split, (x, values) in splits.items():
            marker = "-" if split == "train" and steps else "o-"
            axis.plot(x, values, marker, label=split)
        axis.set_title(name)
        _step_axis(axis)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_schedules(steps: Sequence[Mapping[str, Any]], path: Path) -> bool:
    if not steps:
        return False
    import matplotlib.pyplot as plt

    step_numbers = [record["step"] for record in steps]
    names: list[str] = []
    for record in steps:
        names += [name for name in record.get("weights", {}) if name not in names]
    figure, (weights_axis, lr_axis) = plt.subplots(1, 2, figsize=(9, 3))
    for name in names:
        values = [record.get("weights", {}).get(name, math.nan) for record in steps]
        weights_axis.plot(step_numbers, [math.nan if v is None else v for v in values], label=name)
    weights_axis.set_title("term weights and temperatures")
    weights_axis.set_xlabel("optimizer step")
    if names:
        weights_axis.legend()
    lr_axis.plot(step_numbers, [record.get("lr", math.nan) for record in steps])
    lr_axis.set_title("learning rate")
    lr_axis.set_xlabel("optimizer step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def _plot_accuracy(history: Sequence[Mapping[str, Any]], path: Path) -> bool:
    keys = [k for k in ("top1", "teacher_top1", "agreement") if any(k in r["val"] for r in history)]
    if "top1" not in keys:
        return False
    import matplotlib.pyplot as plt

    epoch_steps = [record["step"] for record in history]
    labels = {"top1": "student", "teacher_top1": "teacher", "agreement": "agreement"}
    figure, axis = plt.subplots(figsize=(5, 3))
    for key in keys:
        values = [record["val"].get(key, math.nan) for record in history]
        axis.plot(epoch_steps, values, "o" + ("-" if key == "top1" else "--"), label=labels[key])
    _step_axis(axis)
    axis.set_ylabel("validation %")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def parameter_counts(student: nn.Module, teachers: Iterable[nn.Module]) -> dict[str, int]:
    """``{"student": n, "teacher": m}`` (``teacher0``, ``teacher1``, ... for several)."""
    teachers = list(teachers)
    counts = {"student": sum(p.numel() for p in student.parameters())}
    for index, teacher in enumerate(teachers):
        name = "teacher" if len(teachers) == 1 else f"teacher{index}"
        counts[name] = sum(p.numel() for p in teacher.parameters())
    return counts


def _run_section(
    history: Sequence[Mapping[str, Any]], model_sizes: Mapping[str, int] | None
) -> list[str]:
    """Model sizes and wall time (the epochs' training and validation, summed)."""
    seconds = sum(record.get("time_s", 0.0) for record in history)
    lines = ["## Run", "", f"- wall time: {seconds:.1f} s (training and validation, all epochs)"]
    if model_sizes:
        student = model_sizes.get("student")
        for name, count in model_sizes.items():
            compared = student and name != "student"
            ratio = f" ({count / student:.1f}× the student)" if compared else ""
            lines.append(f"- {name}: {count:,} parameters{ratio}")
    return [*lines, ""]


def _baseline_row(baseline: Path) -> tuple[str, Mapping[str, float]]:
    """The results row of a baseline run: its final validation metrics."""
    epochs = [r for r in read_jsonl(baseline / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not epochs:
        raise FileNotFoundError(
            f"baseline {baseline}: no epoch records in {baseline / 'metrics.jsonl'} (expected "
            "the directory of a finished torchkd run)"
        )
    return f"baseline `{baseline}` (final, epoch {epochs[-1]['epoch']})", epochs[-1]["val"]


NO_PLOTS = (
    "Plots are not drawn: matplotlib is not installed (`pip install 'torchkd[log]'` adds them)."
)


def _plots(
    history: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], plots_dir: Path
) -> list[str]:
    """Draw the plots into ``plots_dir`` and return their report sections; without matplotlib,
    a section saying so and which extra installs it."""
    if not available("matplotlib"):
        return ["## Plots", "", NO_PLOTS, ""]
    import matplotlib

    matplotlib.use("Agg")
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "losses.png": (
            "Loss terms (train and validation)",
            _plot_losses(history, steps, plots_dir / "losses.png"),
        ),
        "schedules.png": (
            "Weights, temperatures and learning rate",
            _plot_schedules(steps, plots_dir / "schedules.png"),
        ),
        "accuracy.png": (
            "Student vs teacher accuracy",
            _plot_accuracy(history, plots_dir / "accuracy.png"),
        ),
    }
    lines: list[str] = []
    for file_name, (caption, written) in plots.items():
        if written:
            lines += [f"## {caption}", "", f"![{caption}](plots/{file_name})", ""]
    return lines


def write_report(
    run_dir: str | Path,
    history: Sequence[Mapping[str, Any]] | None = None,
    *,
    steps: Sequence[Mapping[str, Any]] | None = None,
    test_metrics: Mapping[str, float] | None = None,
    title: str | None = None,
    model_sizes: Mapping[str, int] | None = None,
    baseline: str | Path | None = None,
) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report's path.

    The plots need matplotlib (the ``log`` extra); without it the report has every table and
    a "Plots" section saying that ``pip install 'torchkd[log]'`` adds them.

    Args:
        run_dir: the run directory.
        history: epoch records (default: those of ``run_dir/metrics.jsonl``).
        steps: step records for the schedule plot (default: from ``metrics.jsonl``).
        test_metrics: final test metrics, shown in the summary.
        title: the report heading (default: the run directory's name).
        model_sizes: parameter counts by model (:func:`parameter_counts`), in the run section.
        baseline: the directory of a run to compare with (e.g. the student trained without
            KD): its final validation metrics are a row of the results table.

    Raises:
        FileNotFoundError: ``baseline`` holds no epoch records.
    """
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    if history is None:
        history = [r for r in records if r.get("kind") == "epoch"]
    if steps is None:
        steps = [r for r in records if r.get("kind") == "step"]
    baseline_row = None if baseline is None else _baseline_row(Path(baseline))
    lines = [f"# {title or run_dir.name}", ""]
    if not history:
        lines.append("No epoch finished yet.")
    else:
        lines += _teacher_score(history)
        lines += _summary(history, test_metrics, baseline_row)
        lines += _weighted_terms(steps)
        lines += _run_section(history, model_sizes)
        lines += ["## Epochs", "", _epoch_table(history), ""]
        lines += _plots(history, steps, run_dir / "plots")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _summary(
    history: Sequence[Mapping[str, Any]],
    test_metrics: Mapping[str, float] | None,
    baseline_row: tuple[str, Mapping[str, float]] | None,
) -> list[str]:
    final = history[-1]["val"]
    best = max(history, key=lambda r: r["val"].get("top1", -math.inf))
    columns = [m for m in _TABLE_METRICS if m in final]
    rows = [("final (epoch {})".format(history[-1]["epoch"]), final)]
    if "top1" in final:
        rows.append((f"best val top1 (epoch {best['epoch']})", best["val"]))
    if test_metrics:
        rows.append(("test (final model)", test_metrics))
    if baseline_row is not None:
        rows.append(baseline_row)
    lines = [
        "## Results",
        "",
        "| | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for label, metrics in rows:
        lines.append(
            f"| {label} | " + " | ".join(_format_value(m, metrics.get(m)) for m in columns) + " |"
        )
    lines += ["", "Accuracy-like metrics (top1, agreement) are in percent.", ""]
    return lines


def _teacher_score(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The teacher's own final validation top-1 (and perplexity, beside the student's, for
    token-level runs), first in the report: a student distilled from an untrained or wrong
    teacher (near chance) is recognised at a glance."""
    final = history[-1]["val"]
    teacher_top1 = final.get("teacher_top1")
    if teacher_top1 is None:
        return []
    score = f"Teacher's own validation top-1: {teacher_top1:.2f} %"
    if final.get("teacher_perplexity") is not None:
        student = _format_value("perplexity", final.get("perplexity"))
        teacher = _format_value("teacher_perplexity", final["teacher_perplexity"])
        score += f", perplexity {teacher} (student {student})"
    return [f"**{score}**", ""]


def _weighted_terms(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each term's weighted value ``w_i · L_i`` and its share ``|w_i L_i| / Σ_j |w_j L_j|`` of
    the loss at the last logged step, so a term that dwarfs the others shows."""
    last = next((r for r in reversed(steps) if r.get("terms") and r.get("weights")), None)
    if last is None:
        return []
    shares = weighted_shares(last["terms"], last["weights"])
    if not shares:
        return []
    lines = [
        f"## Weighted loss terms (step {last.get('step', '?')})",
        "",
        "| term | value | weight | weighted | share of the loss |",
        "|---|---|---|---|---|",
    ]
    for name, (value, share) in shares.items():
        lines.append(
            f"| {name} | {last['terms'][name]:.4g} | {last['weights'][name]:.4g} | "
            f"{value:.4g} | {share:.1f} % |"
        )
    return [*lines, ""]
