"""The tables of ``benchmarks/methods_mnist1d.py``: one per student x setting, each row's
gains paired per seed with its baseline, and the issue's targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from torchkd.environment import environment

from .rows import BASELINES, GROUP_STUDENTS, GROUPS, METHODS, SETTINGS, STUDENTS


def targets(runs: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the runs in the table."""
    lines = ["", "### Targets", ""]

    def mean(method: str, student: str, setting: str) -> float | None:
        found = [r["test_top1"] for r in _runs(runs, method, student, setting).values()]
        return statistics.mean(found) if found else None

    for student in STUDENTS:
        found = [r["test_top1"] for r in _runs(runs, "baseline", student, "labeled").values()]
        if len(found) > 1:
            spread = statistics.stdev(found)
            verdict = "met" if spread <= 1.5 else "NOT met"
            lines.append(
                f"- {student.upper()} baseline seed std {spread:.2f} points (target ≤ 1.5): "
                f"{verdict}"
            )
    kd, base = mean("kd", "mlp", "transfer"), mean("baseline", "mlp", "labeled")
    if kd is not None and base is not None:
        verdict = "met" if kd - base >= 12 else "NOT met"
        lines.append(
            f"- transfer setting, KD on the MLP: {kd - base:+.1f} points over the baseline "
            f"(target ≥ +12): {verdict}"
        )
    best = []
    for student in STUDENTS:
        base = mean("baseline", student, "labeled")
        gains = [
            (value - base, METHODS[name].label)
            for name in METHODS
            if name != "baseline"
            and base is not None
            and (value := mean(name, student, "labeled")) is not None
        ]
        if gains:
            gain, label = max(gains)
            best.append(gain)
            lines.append(
                f"- labeled setting, {student.upper()}: best method {label}, {gain:+.1f} points"
            )
    if best:
        verdict = "met" if max(best) >= 2 else "NOT met"
        lines.append(f"- best labeled-setting gain ≥ +2 on at least one student: {verdict}")
    return lines


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def _runs(
    records: list[dict[str, Any]], method: str, student: str, setting: str, generation: int = 1
) -> dict:
    if method in BASELINES:
        setting = "labeled"  # the baselines cannot use unlabeled samples
    return {
        r["seed"]: r
        for r in records
        if r["method"] == method
        and r["student"] == student
        and r["setting"] == setting
        and r.get("generation", 1) == generation
    }


def render_table(records: list[dict[str, Any]], header: list[str], group: str = "all") -> str:
    """One table per student x setting: accuracy, gain and paired per-seed differences against
    each row's baseline (a born-again generation is a row of its own)."""
    lines = [*header]
    rows = [
        (name, generation)
        for name in GROUPS[group]
        for generation in range(1, METHODS[name].generations + 1)
    ]
    for student in GROUP_STUDENTS[group]:
        for setting in SETTINGS:
            lines += [
                "",
                f"### {student.upper()} student, {setting} setting",
                "",
                "| method | test top-1 (%) | gain over baseline | paired diff (mean ± std) "
                "| wins | seeds | s / run |",
                "|---|---|---|---|---|---|---|",
            ]
            for name, generation in rows:
                method = METHODS[name]
                label = method.label
                if method.generations > 1:
                    label += f", generation {generation}"
                baseline = _runs(records, method.baseline, student, setting)
                base_mean = (
                    statistics.mean(r["test_top1"] for r in baseline.values()) if baseline else None
                )
                if student == "mlp" and method.teacher_architecture:
                    continue
                if student == "mlp" and method.cnn_only:
                    lines.append(
                        f"| {method.label} | n/a: needs spatial feature maps; the MLP has none "
                        "| | | | | |"
                    )
                    continue
                runs = _runs(records, name, student, setting, generation)
                if not runs:
                    lines.append(f"| {label} | not run | | | | | |")
                    continue
                accuracies = [r["test_top1"] for r in runs.values()]
                seconds = statistics.mean(r["seconds"] for r in runs.values())
                gain, paired, wins = "—", "—", "—"
                if name not in BASELINES and base_mean is not None:
                    gain = f"{statistics.mean(accuracies) - base_mean:+.1f}"
                    common = sorted(set(runs) & set(baseline))
                    diffs = [runs[s]["test_top1"] - baseline[s]["test_top1"] for s in common]
                    if diffs:
                        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                        paired = f"{statistics.mean(diffs):+.1f} ± {spread:.1f}"
                        wins = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
                    if statistics.mean(accuracies) <= base_mean:
                        gain += " (no gain)"
                elif setting == "transfer" and name in BASELINES:
                    gain = "(labeled runs: CE cannot use unlabeled rows)"
                nonfinite = sum(r["nonfinite_steps"] for r in runs.values())
                note = f" ({nonfinite} skipped non-finite steps)" if nonfinite else ""
                lines.append(
                    f"| {label} | {_mean_std(accuracies)}{note} | {gain} | {paired} "
                    f"| {wins} | {len(runs)} | {seconds:.1f} |"
                )
    methods = [METHODS[name] for name in GROUPS[group]]
    notes = [f"- {m.label}: `{' '.join(m.overrides)}`" for m in methods if m.overrides]
    if notes:
        lines += ["", "Benchmark-only overrides of the recipes:", "", *notes]
    return "\n".join(lines) + "\n"


def environment_lines() -> list[str]:
    details = environment()
    return [
        f"- torch {details['torch']}, Python {details['python']}, {details['cpu']}, "
        f"{details['cores']} cores, device {details['device']}, 1 thread per worker",
    ]
