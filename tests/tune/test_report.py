"""The search report, written from a study built in memory (no training): best parameters,
importances, the T x alpha plot, pruned trials and the command that trains the best values."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from tolerances import FLOAT64_EPS, float32_tolerance

from torchkd.config import recipe_from_dict
from torchkd.tune import TuneResult
from torchkd.tune.report import summarize, write_tune_report

SPACE = {
    "terms.0.loss_kwargs.temperature": {"type": "float", "low": 1.0, "high": 8.0},
    "terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.9},
}
DISTRIBUTIONS = {
    "terms.0.loss_kwargs.temperature": FloatDistribution(1.0, 8.0),
    "terms.0.loss_kwargs.alpha": FloatDistribution(0.1, 0.9),
}


def recipe():
    return recipe_from_dict(
        {
            "name": "report",
            "data": {"dataset": "digits"},
            "teacher": {"model": "mlp"},
            "student": {"model": "mlp"},
            "terms": [{"name": "kd", "loss": "hinton"}],
            "tune": {"space": SPACE},
        }
    )


def study_with_trials() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for temperature, alpha, value in [(2.0, 0.5, 81.0), (4.0, 0.9, 87.0), (6.0, 0.2, 79.0)]:
        params = {
            "terms.0.loss_kwargs.temperature": temperature,
            "terms.0.loss_kwargs.alpha": alpha,
        }
        study.add_trial(
            create_trial(
                params=params,
                distributions=DISTRIBUTIONS,
                value=value,
                intermediate_values={1: value - 10.0, 2: value},
                user_attrs={"seconds": 1.5},
            )
        )
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={"terms.0.loss_kwargs.temperature": 7.5, "terms.0.loss_kwargs.alpha": 0.6},
            distributions=DISTRIBUTIONS,
            intermediate_values={1: 20.0},
            user_attrs={"note": "pruned after epoch 1"},
        )
    )
    return study


def test_report_holds_best_parameters_importances_plots_and_every_trial(tmp_path: Path) -> None:
    study = study_with_trials()
    summary = summarize(study, recipe(), "tpe", ["train.epochs=3"])
    assert summary.counts == {"COMPLETE": 3, "PRUNED": 1}
    assert summary.best_trial == 1 and summary.best_value == 87.0
    assert set(summary.importances) == set(SPACE)
    # optuna's v / Σv in float64, summed again here: ≤ 3 roundings per importance, each ≤ 1
    bound = float32_tolerance(3 * len(SPACE), 1.0, FLOAT64_EPS)
    assert abs(sum(summary.importances.values()) - 1.0) <= bound
    result = TuneResult(
        out=tmp_path,
        storage="sqlite:///study.db",
        study_name="report",
        best_params=summary.best_params or {},
        best_value=summary.best_value,
        best_trial=summary.best_trial,
        counts=summary.counts,
        importances=summary.importances,
        test_metrics={"top1": 90.0, "nll": 0.3, "ece": 0.02},
    )
    report = write_tune_report(
        summary, result, command="torchkd tune r.yaml", recipe_path="configs/r.yaml"
    ).read_text()
    assert "Trial 1: validation top1 87.00 %" in report
    assert (
        "Train them: `torchkd train configs/r.yaml train.epochs=3 "
        "terms.0.loss_kwargs.temperature=4.0 terms.0.loss_kwargs.alpha=0.9`" in report
    )
    assert "RECIPE.yaml" not in report
    assert "Caveat: estimated from only 3 complete trials" in report
    assert "## Retrained best parameters, evaluated once on the test split" in report
    assert "## Parameter importances (fANOVA)" in report
    assert "| `terms.0.loss_kwargs.alpha` |" in report
    assert "pruned after epoch 1" in report and "4 finished trials" in report
    for plot in ("optimization_history.png", "trial_curves.png", "temperature_alpha.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 0


def test_report_without_a_complete_trial_says_so(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    summary = summarize(study, recipe(), "random")
    result = TuneResult(tmp_path, "sqlite://", "report", {}, float("nan"), -1, summary.counts)
    report = write_tune_report(summary, result).read_text()
    assert "No trial completed." in report and "needs at least 2 complete trials" in report


def test_importances_of_many_trials_have_no_caveat(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for index in range(10):
        params = {
            "terms.0.loss_kwargs.temperature": 1.0 + 0.5 * index,
            "terms.0.loss_kwargs.alpha": 0.1 + 0.05 * index,
        }
        study.add_trial(
            create_trial(params=params, distributions=DISTRIBUTIONS, value=80.0 + index)
        )
    summary = summarize(study, recipe(), "tpe")
    result = TuneResult(tmp_path, "sqlite://", "report", {}, 89.0, 9, summary.counts)
    report = write_tune_report(summary, result).read_text()
    assert "| `terms.0.loss_kwargs.alpha` |" in report and "Caveat" not in report
    assert "Train them: the searched recipe with the overrides `terms.0" in report
