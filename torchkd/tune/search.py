"""Running a search: worker processes claim and train trials (each one
:func:`torchkd.config.fit_recipe` run on the training and validation splits), then the best
parameters are retrained once and evaluated once on the test split."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from torchkd.config import ConfigError, recipe_from_dict
from torchkd.environment import available_cpus
from torchkd.tune.report import summarize, write_tune_report
from torchkd.tune.result import TuneResult
from torchkd.tune.space import check_space, grid_points, trial_overrides
from torchkd.tune.study import (
    Job,
    check_study_matches,
    claim_trial,
    count_finished,
    fingerprint,
    make_sampler,
    open_study,
)

__all__ = ["run_search"]

Echo = Callable[[str], None]
MAX_CONSECUTIVE_FAILURES = 3


def _run_trial(
    trial: optuna.Trial, params: dict[str, Any], job: Job, metric: str
) -> tuple[str, float | None, str]:
    """Train one trial; returns ``(state name, objective value, note)``."""
    from torchkd.config import fit_recipe
    from torchkd.train import NonFiniteLossError

    overrides = [*job.overrides, *trial_overrides(params), "train.progress=false"]
    recipe = recipe_from_dict(job.raw_recipe, overrides)
    run_dir = Path(job.out) / "trials" / f"{trial.number:04d}"
    if run_dir.exists():
        shutil.rmtree(run_dir)

    def report_epoch(record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        trial.report(float(record["val"][metric]), step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        result = fit_recipe(
            recipe, run_dir, evaluate_test=False, report=False, on_epoch_end=report_epoch
        )
    except optuna.TrialPruned as pruned:
        return "PRUNED", None, str(pruned)
    except NonFiniteLossError as error:  # diverged: a bad region of the space, not a bug
        return "PRUNED", None, f"non-finite loss at step {error.step}"
    return "COMPLETE", float(result.final_metrics[metric]), ""


def _describe_params(params: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{path.split('.')[-1]}={text(value)}" for path, value in params.items())


def _work(job: Job, echo: Echo = print) -> None:
    """One worker: claim and run trials until the study holds ``job.trials`` finished ones."""
    if job.threads > 0:
        import torch

        torch.set_num_threads(job.threads)
    _quiet_optuna()
    recipe = recipe_from_dict(job.raw_recipe, job.overrides)
    assert recipe.tune is not None
    metric, space = recipe.tune.metric, recipe.tune.space
    study = open_study(job, recipe, recipe.tune.seed)
    # a different seed per worker and per restart, so a resumed random search does not replay
    seed = recipe.tune.seed + 1000 * job.worker + len(study.trials)
    study.sampler = make_sampler(job.sampler, seed, recipe.tune.startup_trials)
    failures = 0
    while (claimed := claim_trial(study, job, space, echo)) is not None:
        trial, params = claimed
        started = time.perf_counter()
        try:
            state, value, note = _run_trial(trial, params, job, metric)
        except KeyboardInterrupt:
            trial.set_user_attr("failure", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
            raise
        except ConfigError as error:  # the recipe with these values is invalid: fix the space
            trial.set_user_attr("failure", str(error))
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as error:
            failures += 1
            message = f"{type(error).__name__}: {error}"
            trial.set_user_attr("failure", message)
            study.tell(trial, state=TrialState.FAIL)
            echo(f"trial {trial.number} failed ({message}); it does not count")
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(
                    f"{failures} trials in a row failed; the last: {message}"
                ) from error
            continue
        failures = 0
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", seconds)
        if note:
            trial.set_user_attr("note", note)
        study.tell(trial, value, state=getattr(TrialState, state))
        outcome = (state, value, note, seconds)
        _echo_progress(study, job, trial.number, outcome, params, metric, echo)


def _echo_progress(
    study: optuna.Study,
    job: Job,
    number: int,
    outcome: tuple[str, float | None, str, float],
    params: dict[str, Any],
    metric: str,
    echo: Echo,
) -> None:
    state, value, note, seconds = outcome
    done = count_finished(study)
    result = f"val {metric} {value:.4f}" if value is not None else note
    try:
        best = study.best_trial
        best_text = f"best {best.value:.4f} (trial {best.number})"
    except ValueError:
        best_text = "no complete trial yet"
    echo(
        f"[{done}/{job.trials}] trial {number} {state.lower()} in {seconds:.1f} s: {result}; "
        f"{best_text}; {_describe_params(params)}"
    )


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _worker_main(job: Job) -> None:
    _work(job, lambda line: print(line, flush=True))


def run_search(
    raw_recipe: dict[str, Any],
    overrides: Sequence[str] = (),
    *,
    trials: int | None = None,
    sampler: str | None = None,
    workers: int = 1,
    out: str | Path | None = None,
    storage: str | None = None,
    retrain: bool = True,
    command: str = "",
    recipe_path: str | None = None,
    echo: Echo = print,
) -> TuneResult:
    """Search the recipe's ``tune.space``, retrain the best parameters and write the report.

    Args:
        raw_recipe: the recipe as parsed YAML (it must have a ``tune:`` section).
        overrides: ``key=value`` overrides applied to every trial and to the retrain.
        trials: finished (complete + pruned) trials wanted in the study, counting those of an
            earlier run of the same search (default ``tune.trials``; with the grid sampler at
            most the grid size).
        sampler: ``tpe``, ``random`` or ``grid`` (default ``tune.sampler``).
        workers: processes running trials in parallel against the same study.
        out: the search directory (default ``runs/<recipe name>``).
        storage: an Optuna storage URL (default ``sqlite:///OUT/study.db``).
        retrain: retrain the best parameters and evaluate that model once on the test split.
        command: the command line, quoted in the report.
        recipe_path: the recipe's file, named in the report's command that trains the best
            parameters.
        echo: where progress lines go.

    Raises:
        ConfigError: no ``tune:`` section, a space entry that does not fit the recipe, or a
            stored study of another recipe.
    """
    started = time.perf_counter()
    _quiet_optuna()
    recipe = recipe_from_dict(raw_recipe, overrides)
    if recipe.tune is None:
        raise ConfigError(
            ["tune: required key missing (declare the search, e.g. tune: {space: {...}})"]
        )
    tune = recipe.tune
    check_space(raw_recipe, overrides, recipe)
    sampler = sampler or tune.sampler
    trials = trials or tune.trials
    if sampler == "grid":
        grid_size = len(grid_points(tune.space))
        if trials > grid_size:
            echo(f"the grid has {grid_size} points: running {grid_size} trials, not {trials}")
            trials = grid_size
    out = Path(out) if out is not None else Path("runs") / recipe.name
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{out / 'study.db'}"
    job = Job(
        raw_recipe=raw_recipe,
        overrides=list(overrides),
        out=str(out),
        storage=storage,
        study_name=recipe.name,
        trials=trials,
        sampler=sampler,
    )
    study = open_study(job, recipe, tune.seed)
    check_study_matches(study, fingerprint(raw_recipe, overrides), storage)
    done = count_finished(study)
    echo(
        f"study {recipe.name!r} in {storage}: {done} of {trials} trials finished; "
        f"sampler {sampler}, pruner {tune.pruner}, objective: validation {tune.metric}"
    )
    _run_workers(job, workers, echo)
    summary = summarize(study, recipe, job.sampler, overrides)
    test_metrics = None
    if retrain and summary.best_params is not None:
        test_metrics = _retrain(raw_recipe, overrides, summary.best_params, out, echo)
    result = TuneResult(
        out=out,
        storage=storage,
        study_name=recipe.name,
        best_params=summary.best_params or {},
        best_value=summary.best_value,
        best_trial=summary.best_trial,
        counts=summary.counts,
        importances=summary.importances,
        test_metrics=test_metrics,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_tune_report(
        summary, result, command=command, recipe_path=recipe_path
    )
    return result


def _run_workers(job: Job, workers: int, echo: Echo) -> None:
    if workers <= 1:
        _work(job, echo)
        return
    threads = max(1, available_cpus() // workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        worker_job = Job(**{**job.__dict__, "worker": index, "threads": threads})
        process = context.Process(target=_worker_main, args=(worker_job,))
        process.start()
        processes.append(process)
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers} worker processes failed: exit {failed}")


def _retrain(
    raw: dict[str, Any],
    overrides: Sequence[str],
    best_params: dict[str, Any],
    out: Path,
    echo: Echo,
) -> dict[str, float]:
    """Train the best parameters on the full recipe; the one evaluation on the test split."""
    from torchkd.config import fit_recipe

    recipe = recipe_from_dict(raw, [*overrides, *trial_overrides(best_params)])
    run_dir = out / "best"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    echo(f"retraining the best parameters into {run_dir}")
    result = fit_recipe(recipe, run_dir)  # train.progress: step lines without a terminal
    return dict(result.test_metrics or {})
