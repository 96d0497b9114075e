"""The report of a search (``tune_report.md``): best parameters, every trial, importances, plots.

Parameter importances are fANOVA's (Hutter, Hoos & Leyton-Brown, "An Efficient Approach for
Assessing Hyperparameter Importance", ICML 2014): the share of the objective's variance, over
the complete trials, that each parameter explains on its own. Plots are drawn with matplotlib:
the optimization history, every trial's validation curve (where pruning stopped it) and, when
the space holds a temperature and an α, the objective over the T × α plane.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from torchkd.tune.space import trial_overrides

if TYPE_CHECKING:
    from torchkd.config import Recipe
    from torchkd.tune.result import TuneResult

__all__ = ["SearchSummary", "TrialRow", "summarize", "write_tune_report"]

# below this many complete trials the report warns that the importances are unreliable
RELIABLE_IMPORTANCE_TRIALS = 10


@dataclass
class TrialRow:
    """One trial of the study, as the report shows it."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    curve: dict[int, float]
    seconds: float | None
    note: str


@dataclass
class SearchSummary:
    """What the report needs from the study."""

    name: str
    sampler: str
    pruner: str
    metric: str
    maximize: bool
    space: dict[str, dict[str, Any]]
    overrides: list[str]
    rows: list[TrialRow]
    counts: dict[str, int]
    best_params: dict[str, Any] | None = None
    best_value: float = math.nan
    best_trial: int = -1
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""


def _row(trial: optuna.trial.FrozenTrial) -> TrialRow:
    note = trial.user_attrs.get("note") or trial.user_attrs.get("failure") or ""
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state == TrialState.COMPLETE else None,
        params=dict(trial.params),
        curve={int(step): float(v) for step, v in trial.intermediate_values.items()},
        seconds=trial.user_attrs.get("seconds"),
        note=str(note),
    )


def _importances(study: optuna.Study, complete: int) -> tuple[dict[str, float], str]:
    if complete < 2:
        return {}, f"needs at least 2 complete trials (the study has {complete})"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        return optuna.importance.get_param_importances(study, evaluator=evaluator), ""
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return {}, f"could not be estimated ({error})"


def summarize(
    study: optuna.Study, recipe: Recipe, sampler: str, overrides: Sequence[str] = ()
) -> SearchSummary:
    """Collect the trials, the best one and the importances of ``study``.

    ``overrides`` are the search's own ``key=value`` overrides (quoted in the report's command
    that trains the best parameters).
    """
    assert recipe.tune is not None
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    summary = SearchSummary(
        name=recipe.name,
        sampler=sampler,
        pruner=recipe.tune.pruner,
        metric=recipe.tune.metric,
        maximize=recipe.tune.metric == "top1",
        space={
            path: spec.model_dump(exclude_none=True, exclude_defaults=True)
            for path, spec in recipe.tune.space.items()
        },
        overrides=list(overrides),
        rows=[_row(trial) for trial in trials],
        counts=counts,
    )
    if counts.get("COMPLETE", 0):
        best = study.best_trial
        summary.best_params = dict(best.params)
        summary.best_value = float(best.value)
        summary.best_trial = best.number
    summary.importances, summary.importance_note = _importances(study, counts.get("COMPLETE", 0))
    return summary


# ------------------------------------------------------------------------------------ plots


def _short(path: str) -> str:
    """``terms.0.loss_kwargs.temperature`` -> ``temperature``."""
    return path.split(".")[-1]


def _plot_history(summary: SearchSummary, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    complete = [row for row in summary.rows if row.value is not None]
    pruned = [row for row in summary.rows if row.state == "PRUNED" and row.curve]
    axis.scatter(
        [r.number for r in complete], [r.value for r in complete], s=22, label="complete trial"
    )
    if pruned:
        axis.scatter(
            [r.number for r in pruned],
            [r.curve[max(r.curve)] for r in pruned],
            marker="x",
            color="gray",
            label="pruned (last value)",
        )
    best_so_far, running = [], None
    for row in sorted(complete, key=lambda r: r.number):
        better = running is None or (
            row.value > running if summary.maximize else row.value < running
        )
        running = row.value if better else running
        best_so_far.append((row.number, running))
    if best_so_far:
        axis.step(*zip(*best_so_far, strict=True), where="post", color="C1", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(f"validation {summary.metric}")
    axis.set_title(f"{summary.name}: optimization history")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_curves(summary: SearchSummary, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for row in summary.rows:
        if not row.curve:
            continue
        epochs = sorted(row.curve)
        style = {"color": "gray", "alpha": 0.6} if row.state == "PRUNED" else {"alpha": 0.8}
        axis.plot(epochs, [row.curve[e] for e in epochs], linewidth=1, **style)
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"validation {summary.metric}")
    axis.set_title("every trial's validation curve (gray: pruned)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _temperature_alpha_paths(summary: SearchSummary) -> tuple[str, str] | None:
    temperatures = [p for p in summary.space if _short(p) == "temperature"]
    alphas = [p for p in summary.space if _short(p) == "alpha"]
    numeric = [p for p in temperatures + alphas if summary.space[p].get("type") in ("float", "int")]
    if temperatures and alphas and temperatures[0] in numeric and alphas[0] in numeric:
        return temperatures[0], alphas[0]
    return None


def _plot_temperature_alpha(summary: SearchSummary, paths: tuple[str, str], path: Path) -> bool:
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    temperature_path, alpha_path = paths
    rows = [r for r in summary.rows if r.value is not None]
    if not rows:
        return False
    temperatures = [float(r.params[temperature_path]) for r in rows]
    alphas = [float(r.params[alpha_path]) for r in rows]
    values = [float(r.value) for r in rows]
    figure, axis = plt.subplots(figsize=(5.6, 4.2))
    if len(rows) >= 6:
        try:
            triangles = Triangulation(temperatures, alphas)
            axis.tricontourf(triangles, values, levels=12, cmap="viridis", alpha=0.45)
        except (ValueError, RuntimeError):
            pass  # collinear points: the scatter alone
    points = axis.scatter(temperatures, alphas, c=values, cmap="viridis", edgecolors="k", s=36)
    if summary.best_params is not None:
        axis.scatter(
            [summary.best_params[temperature_path]],
            [summary.best_params[alpha_path]],
            marker="*",
            s=240,
            color="red",
            label=f"best (trial {summary.best_trial})",
        )
        axis.legend(fontsize=8)
    figure.colorbar(points, ax=axis, label=f"validation {summary.metric}")
    axis.set_xlabel("temperature T")
    axis.set_ylabel("α (weight of the soft term)")
    axis.set_title("complete trials over T × α")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


# ----------------------------------------------------------------------------------- report


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_text(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f} %" if metric == "top1" else f"{value:.4f}"


def _trials_table(summary: SearchSummary) -> list[str]:
    names = list(summary.space)
    header = ["trial", "state", f"val {summary.metric}", "epochs", *map(_short, names), "s", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.rows:
        cells = [
            str(row.number),
            row.state.lower(),
            _metric_text(summary.metric, row.value),
            str(max(row.curve)) if row.curve else "0",
            *[_value_text(row.params[name]) if name in row.params else "–" for name in names],
            f"{row.seconds:.1f}" if row.seconds is not None else "–",
            row.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _train_command(summary: SearchSummary, recipe_path: str | None) -> str:
    """The line that trains the best parameters: the recipe's path when known."""
    overrides = " ".join([*summary.overrides, *trial_overrides(summary.best_params or {})])
    if recipe_path is None:
        return f"Train them: the searched recipe with the overrides `{overrides}`"
    return f"Train them: `{shlex.join(['torchkd', 'train', recipe_path])} {overrides}`"


def _importance_lines(summary: SearchSummary) -> list[str]:
    """The importance table, with a caveat when few trials completed."""
    if not summary.importances:
        return [f"Not available: {summary.importance_note}."]
    lines = ["| parameter | importance |", "|---|---|"]
    lines += [f"| `{p}` | {v:.3f} |" for p, v in summary.importances.items()]
    complete = summary.counts.get("COMPLETE", 0)
    if complete < RELIABLE_IMPORTANCE_TRIALS:
        lines += [
            "",
            f"Caveat: estimated from only {complete} complete trials (fANOVA fits a random "
            f"forest to them); with fewer than {RELIABLE_IMPORTANCE_TRIALS} a few more trials "
            "can reorder the importances: read them as a hint, not a ranking.",
        ]
    return lines


def write_tune_report(
    summary: SearchSummary,
    result: TuneResult,
    command: str = "",
    recipe_path: str | None = None,
) -> Path:
    """Write ``OUT/tune_report.md`` and its plots under ``OUT/plots/``; returns the path.

    ``recipe_path`` is the searched recipe's file, quoted in the command that trains the best
    parameters (``None``: a recipe given as a dict; the line then names the overrides only).
    """
    import matplotlib

    matplotlib.use("Agg")
    out = result.out
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    finished = summary.counts.get("COMPLETE", 0) + summary.counts.get("PRUNED", 0)
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary.counts.items()))
    lines = [f"# Hyperparameter search: {summary.name}", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [
        f"- study `{result.study_name}` in `{result.storage}`; {finished} finished trials "
        f"({counts}); failed trials do not count",
        f"- sampler `{summary.sampler}`, pruner `{summary.pruner}`; objective: the final "
        f"epoch's {summary.metric} on the validation split (the test split is never built "
        "during the search)",
        f"- wall time of this run: {result.seconds:.0f} s",
        "",
        "## Search space",
        "",
        "| path | spec |",
        "|---|---|",
        *[f"| `{path}` | `{spec}` |" for path, spec in summary.space.items()],
        "",
        "## Best parameters",
        "",
    ]
    if summary.best_params is None:
        lines += ["No trial completed.", ""]
    else:
        lines += [
            f"Trial {summary.best_trial}: validation {summary.metric} "
            f"{_metric_text(summary.metric, summary.best_value)}.",
            "",
            "| parameter | value |",
            "|---|---|",
            *[f"| `{p}` | {_value_text(v)} |" for p, v in summary.best_params.items()],
            "",
            _train_command(summary, recipe_path),
            "",
        ]
    if result.test_metrics:
        metrics = result.test_metrics
        lines += [
            "## Retrained best parameters, evaluated once on the test split",
            "",
            f"test top-1 {_metric_text('top1', metrics.get('top1'))}, NLL "
            f"{metrics.get('nll', math.nan):.4f}, ECE {metrics.get('ece', math.nan):.4f} "
            f"(run directory `{out / 'best'}`)",
            "",
        ]
    lines += ["## Parameter importances (fANOVA)", ""]
    lines += _importance_lines(summary)
    lines += ["", "## Plots", ""]
    _plot_history(summary, plots / "optimization_history.png")
    lines.append("![optimization history](plots/optimization_history.png)")
    _plot_curves(summary, plots / "trial_curves.png")
    lines.append("![validation curves](plots/trial_curves.png)")
    paths = _temperature_alpha_paths(summary)
    if paths and _plot_temperature_alpha(summary, paths, plots / "temperature_alpha.png"):
        lines.append("![T x alpha](plots/temperature_alpha.png)")
    lines += ["", "## All trials", "", *_trials_table(summary), ""]
    report = out / "tune_report.md"
    report.write_text("\n".join(lines))
    return report
