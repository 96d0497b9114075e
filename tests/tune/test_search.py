"""``torchkd tune``: trials inside the space, exact grids, pruning, crash-resume, no test leak."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from torchkd.config import ConfigError, SearchParam, recipe_from_dict
from torchkd.tune import grid_points, run_search, trial_overrides
from torchkd.tune.search import _work
from torchkd.tune.study import Job

SPACE: dict[str, Any] = {
    "terms.0.loss_kwargs.temperature": {"type": "float", "low": 1.0, "high": 8.0},
    "terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.95},
    "train.optimizer.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    "data.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
    "train.optimizer.name": {"type": "categorical", "choices": ["adam", "sgd"]},
}


def tiny_recipe(space: dict[str, Any], epochs: int = 1, **tune: Any) -> dict[str, Any]:
    """Hinton KD of a tiny MLP on sklearn digits from an (untrained) MLP teacher."""
    return {
        "name": "tiny",
        "data": {"dataset": "digits", "batch_size": 128},
        "teacher": {
            "model": "mlp",
            "kwargs": {"in_features": 64, "hidden": [16]},
            "untrained": True,
        },
        "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [8]}},
        "terms": [
            {"name": "kd", "loss": "hinton", "loss_kwargs": {"temperature": 4.0, "alpha": 0.9}}
        ],
        "train": {
            "epochs": epochs,
            "optimizer": {"name": "adam", "lr": 0.01},
            "device": "cpu",
            "log_every_steps": 1000,
        },
        "tune": {"space": space, "pruner": "none", **tune},
    }


def finished_trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def quiet(_: str) -> None:
    pass


def test_search_runs_the_trials_inside_the_space(tmp_path: Path) -> None:
    result = run_search(
        tiny_recipe(SPACE), trials=4, sampler="tpe", out=tmp_path, retrain=False, echo=quiet
    )
    trials = finished_trials(tmp_path)
    assert len(trials) == 4 and result.counts == {"COMPLETE": 4}
    for trial in trials:
        params = trial.params
        assert 1.0 <= params["terms.0.loss_kwargs.temperature"] <= 8.0
        assert 0.1 <= params["terms.0.loss_kwargs.alpha"] <= 0.95
        assert 1e-3 <= params["train.optimizer.lr"] <= 1e-1
        assert params["data.batch_size"] in (32, 64, 96, 128)
        assert params["train.optimizer.name"] in ("adam", "sgd")
        # the objective is the final epoch's validation top-1 of the trial's own run
        run_dir = tmp_path / "trials" / f"{trial.number:04d}"
        (epoch,) = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").open() if '"val"' in line
        ]
        assert trial.value == pytest.approx(epoch["val"]["top1"])
        # the trial's recipe is the base recipe with the sampled overrides
        config = (run_dir / "config.yaml").read_text()
        assert f"batch_size: {params['data.batch_size']}" in config
    assert result.best_value == max(trial.value for trial in trials)
    assert set(result.importances) == set(SPACE)  # the report's contents: tests/tune/test_report.py
    assert result.report_path == tmp_path / "tune_report.md" and result.report_path.is_file()


def test_grid_sampler_covers_the_grid_exactly(tmp_path: Path) -> None:
    space = {
        "terms.0.loss_kwargs.temperature": {"type": "float", "low": 1, "high": 8, "grid": [2, 4]},
        "terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.4},
    }
    lines: list[str] = []
    run_search(
        tiny_recipe(space),
        trials=50,
        sampler="grid",
        out=tmp_path,
        retrain=False,
        echo=lines.append,
    )
    assert "the grid has 6 points: running 6 trials, not 50" in lines
    visited = sorted(
        (t.params["terms.0.loss_kwargs.temperature"], t.params["terms.0.loss_kwargs.alpha"])
        for t in finished_trials(tmp_path)
    )
    expected = [(t, a) for t in (2.0, 4.0) for a in (0.1, 0.5, 0.9)]
    assert visited == expected  # exactly the grid values (steps are rounded)


def test_grid_points_from_steps_and_choices() -> None:
    space = {
        "x": SearchParam(type="float", low=0.0, high=0.3, step=0.1),
        "n": SearchParam(type="int", low=2, high=6, step=2),
        "c": SearchParam(type="categorical", choices=["a", "b"], grid=["b"]),
    }
    points = grid_points(space)
    assert len(points) == 4 * 3 * 1
    assert sorted({p["x"] for p in points}) == [0.0, 0.1, 0.2, 0.3]
    assert sorted({p["n"] for p in points}) == [2, 4, 6] and {p["c"] for p in points} == {"b"}
    with pytest.raises(ConfigError, match=r"tune\.space\.y: the grid sampler needs"):
        grid_points({"y": SearchParam(type="float", low=0, high=1)})


def test_median_pruner_stops_a_hopeless_trial(tmp_path: Path) -> None:
    # trial 0 learns (lr 1e-2); trial 1 (lr 1e-7) stays at chance and is below the median
    space = {"train.optimizer.lr": {"type": "categorical", "choices": [1.0e-2, 1.0e-7]}}
    recipe = tiny_recipe(space, epochs=3, pruner="median", startup_trials=1, warmup_epochs=0)
    result = run_search(recipe, sampler="grid", out=tmp_path, retrain=False, echo=quiet)
    assert result.counts == {"COMPLETE": 1, "PRUNED": 1}
    pruned = next(t for t in finished_trials(tmp_path) if t.state == TrialState.PRUNED)
    assert pruned.params["train.optimizer.lr"] == 1e-7
    assert list(pruned.intermediate_values) == [1]  # stopped after its first epoch


def test_the_test_split_never_reaches_a_trial(tmp_path: Path, built_splits: list[str]) -> None:
    built = built_splits
    space = {"terms.0.loss_kwargs.temperature": {"type": "float", "low": 1, "high": 8}}
    lines: list[str] = []
    result = run_search(
        tiny_recipe(space), trials=3, sampler="random", out=tmp_path, echo=lines.append
    )
    retrain_line = next(i for i, line in enumerate(lines) if line.startswith("retraining"))
    assert retrain_line == len(lines) - 1  # retraining comes after every trial
    # three trials build train + val only; the retrain builds train, val, test: test once
    assert len(built) == 3 * 2 + 3 and built[-3:] == ["train", "val", "test"]
    assert "test" not in built[:-3]
    assert set(result.test_metrics) >= {"top1", "nll", "ece"}
    assert "evaluated once on the test split" in (tmp_path / "tune_report.md").read_text()


def trial_states(database: Path) -> list[str]:
    """The trials' states, read without creating anything (Optuna would create the tables)."""
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return [row[0] for row in connection.execute("SELECT state FROM trials")]
    except sqlite3.OperationalError:  # the search has not created its tables yet
        return []


KILLABLE_SEARCH = """
import sys, yaml
from torchkd.tune import run_search
recipe = yaml.safe_load(open(sys.argv[1]))
run_search(recipe, trials=3, sampler="random", out=sys.argv[2], retrain=False)
"""


def test_a_killed_search_resumes_to_exactly_the_trials_asked(tmp_path: Path) -> None:
    import yaml

    space = {"terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.9}}
    recipe = tiny_recipe(space, epochs=4)
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "search"
    script = tmp_path / "search.py"
    script.write_text(KILLABLE_SEARCH)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, str(script), str(recipe_path), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    states: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and process.poll() is None:
            states = trial_states(out / "study.db")
            if states.count("COMPLETE") >= 1 and "RUNNING" in states:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        _, stderr = process.communicate()
    assert states.count("COMPLETE") == 1 and "RUNNING" in states, stderr.decode()[-2000:]

    lines: list[str] = []
    run_search(recipe, trials=3, sampler="random", out=out, retrain=False, echo=lines.append)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out}/study.db")
    by_state = [t.state.name for t in study.get_trials()]
    assert by_state.count("COMPLETE") == 3 and by_state.count("FAIL") == 1
    assert "RUNNING" not in by_state
    assert any("left running by a process that ended: marked failed" in line for line in lines)
    assert lines[0].startswith("study 'tiny'") and "1 of 3 trials finished" in lines[0]


def test_concurrent_workers_share_one_study(tmp_path: Path) -> None:
    # two workers (threads here; `workers=K` runs the same loop in K processes) claim trials
    # under the study lock: together they run each grid point once, and no more trials
    space = {"terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.9, "step": 0.2}}
    recipe = tiny_recipe(space)
    run_search(recipe, trials=1, sampler="grid", out=tmp_path, retrain=False, echo=quiet)
    job = Job(recipe, [], str(tmp_path), f"sqlite:///{tmp_path / 'study.db'}", "tiny", 5, "grid")
    workers = [
        threading.Thread(target=_work, args=(replace(job, worker=index), quiet))
        for index in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    trials = finished_trials(tmp_path)
    alphas = sorted(t.params["terms.0.loss_kwargs.alpha"] for t in trials)
    assert alphas == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert {t.user_attrs["pid"] for t in trials} == {os.getpid()}


def test_a_study_resumes_only_with_the_same_recipe(tmp_path: Path) -> None:
    space = {"terms.0.loss_kwargs.alpha": {"type": "float", "low": 0.1, "high": 0.9}}
    run_search(tiny_recipe(space, trials=1), out=tmp_path, retrain=False, echo=quiet)
    # more tune.trials extends the same search
    run_search(tiny_recipe(space, trials=2), out=tmp_path, retrain=False, echo=quiet)
    assert len(finished_trials(tmp_path)) == 2
    with pytest.raises(ConfigError, match="holds a search of another recipe"):
        run_search(tiny_recipe(space, epochs=2), trials=1, out=tmp_path, echo=quiet)


def test_space_errors_name_the_entry(tmp_path: Path) -> None:
    bad_path = {"terms.0.loss_kwargs.temprature": {"type": "float", "low": 1, "high": 8}}
    with pytest.raises(
        ConfigError,
        match=r"tune\.space\.terms\.0\.loss_kwargs\.temprature: .*"
        "unknown argument of HintonLoss; did you mean 'temperature'",
    ):
        run_search(tiny_recipe(bad_path), trials=1, out=tmp_path, echo=quiet)
    bad_key = {"train.optimiser.lr": {"type": "float", "low": 0.1, "high": 1}}
    with pytest.raises(ConfigError, match="optimiser is not a recipe key"):
        run_search(tiny_recipe(bad_key), trials=1, out=tmp_path, echo=quiet)
    with pytest.raises(ConfigError, match="tune: required key missing"):
        run_search({k: v for k, v in tiny_recipe(bad_key).items() if k != "tune"}, out=tmp_path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "float", "low": 2, "high": 1}, "expected low <= high"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "log: needs low > 0"),
        ({"type": "float", "high": 1}, "low, high: both required"),
        ({"type": "int", "low": 1, "high": 4.5}, "high: expected integers"),
        ({"type": "categorical", "choices": ["a"], "low": 1}, "low: not used by type categ"),
        ({"type": "categorical"}, "choices: required"),
        ({"type": "float", "low": 0, "high": 1, "grid": [0.5, 2]}, r"grid: values \[2\]"),
        ({"type": "categorical", "choices": [1, 2], "grid": [3]}, "not among the choices"),
    ],
)
def test_search_param_validation(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        recipe_from_dict(tiny_recipe({"train.optimizer.lr": entry}))
    assert "tune.space.train.optimizer.lr" in str(caught.value)


def test_trial_overrides_round_trip_through_yaml() -> None:
    params = {"train.optimizer.lr": 1e-5, "train.optimizer.name": "sgd", "data.batch_size": 64}
    recipe = recipe_from_dict(tiny_recipe(SPACE), trial_overrides(params))
    assert recipe.train.optimizer.lr == 1e-5 and recipe.train.optimizer.name == "sgd"
    assert recipe.data.batch_size == 64 and math.isclose(recipe.train.optimizer.lr, 1e-5)


def test_cli_tune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from torchkd.cli import main

    space = {"terms.0.loss_kwargs.temperature": {"type": "float", "low": 1, "high": 8}}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(space)))
    out = tmp_path / "search"
    arguments = ["tune", str(recipe), "train.epochs=1", "--trials", "2", "--out", str(out)]
    assert main([*arguments, "--no-retrain"]) == 0
    printed = capsys.readouterr().out
    assert "[2/2] trial 1 complete" in printed and "best trial" in printed
    report = (out / "tune_report.md").read_text()
    assert "train.epochs=1 --trials=2" in report and "train.epochs=1 terms.0." in report
    no_tune = tmp_path / "plain.yaml"
    no_tune.write_text(yaml.safe_dump({k: v for k, v in tiny_recipe(space).items() if k != "tune"}))
    assert main(["tune", str(no_tune), "--out", str(out)]) == 2
    assert "tune: required key missing" in capsys.readouterr().err
