"""Hyperparameter search over a recipe with Optuna: ``torchkd tune RECIPE.yaml``.

The search space lives in the recipe's ``tune:`` section, keyed by dotted recipe paths (the
paths of ``key=value`` overrides)::

    tune:
      trials: 16
      sampler: tpe              # tpe | random | grid
      pruner: median            # median | hyperband | none
      space:
        terms.0.loss_kwargs.temperature: {type: float, low: 1, high: 8}
        terms.0.loss_kwargs.alpha: {type: float, low: 0.1, high: 0.95}
        train.optimizer.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
        student.kwargs.width: {type: categorical, choices: [4, 6, 8]}

A trial is the recipe with its sampled values applied as overrides, trained by
:func:`torchkd.train.fit`. The objective is the final epoch's metric on the *validation* split
carved from the training data: a trial builds only the training and validation loaders
(:func:`build_search_loaders`), so the test split cannot leak into the choice. Each epoch's
validation value is reported to the pruner (median or Hyperband), which may stop a trial early.

Trials live in an Optuna study stored in SQLite (``runs/<name>/study.db`` by default), so a
search stopped at any moment continues where it stopped: trials left running by a process that
died are marked failed, and new trials are started until exactly ``trials`` are finished
(complete or pruned). Trials are claimed under a file lock (``study.lock``), so ``workers``
processes share one study without starting more than ``trials`` between them.

The best parameters are retrained once on the full recipe and only that model is evaluated on
the test split; ``tune_report.md`` holds the best parameters, every trial, the parameter
importances and the plots (see :mod:`torchkd.tune_report`).

TPE is the tree-structured Parzen estimator (Bergstra et al., "Algorithms for
Hyper-Parameter Optimization", NeurIPS 2011); Hyperband is Li et al., JMLR 2018.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import optuna
import yaml
from optuna.trial import TrialState

from torchkd.config import ConfigError, Recipe, SearchParam, recipe_from_dict

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchkd.config import DataConfig

__all__ = [
    "SearchLoaders",
    "TuneResult",
    "build_search_loaders",
    "grid_points",
    "load_raw_recipe",
    "run_search",
    "suggest_params",
    "trial_overrides",
]

Echo = Callable[[str], None]
MAX_CONSECUTIVE_FAILURES = 3


class SearchLoaders(NamedTuple):
    """The loaders a search may use: training and validation, never test."""

    train: DataLoader
    val: DataLoader


def build_search_loaders(data: DataConfig, seed: int = 0) -> SearchLoaders:
    """Training and validation loaders of ``data``, without building the test split.

    The splits are the ones :func:`torchkd.config.build_loaders` makes (same ``val_fraction``
    and ``seed``; a transfer set replaces the training split), so a trial trains and validates
    on exactly the data of ``torchkd train``.
    """
    import torch
    from torch.utils.data import DataLoader

    from torchkd.config import _WithoutLabels  # the label-free view of a transfer set
    from torchkd.data import create_dataset

    split_kwargs = {"val_fraction": data.val_fraction, "split_seed": data.seed, **data.kwargs}
    try:
        val_set = create_dataset(data.dataset, "val", **split_kwargs)
        if data.transfer is None:
            train_set: Any = create_dataset(data.dataset, "train", **split_kwargs)
        else:
            transfer = data.transfer
            train_set = create_dataset(
                transfer.dataset,
                "train",
                num_samples=transfer.num_samples,
                seed=transfer.seed,
                **transfer.kwargs,
            )
            if not transfer.labeled and "labels" in train_set[0]:
                train_set = _WithoutLabels(train_set)
    except (KeyError, ValueError, TypeError) as error:
        raise ConfigError([f"data: {error}"]) from error
    train = DataLoader(
        train_set,
        batch_size=data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=data.num_workers,
    )
    val = DataLoader(
        val_set,
        batch_size=data.eval_batch_size or data.batch_size,
        shuffle=False,
        num_workers=data.num_workers,
    )
    return SearchLoaders(train, val)


# ------------------------------------------------------------------------------- the space


def _yaml_scalar(value: Any) -> str:
    """``value`` written as a YAML scalar that reads back as the same value (``1.0e-05``)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def trial_overrides(params: dict[str, Any]) -> list[str]:
    """``key=value`` overrides that apply sampled ``params`` to a recipe.

    Example:
        >>> trial_overrides({"train.optimizer.lr": 1e-05, "terms.0.loss_kwargs.alpha": 0.5})
        ['train.optimizer.lr=1.0e-05', 'terms.0.loss_kwargs.alpha=0.5']
    """
    return [f"{path}={_yaml_scalar(value)}" for path, value in params.items()]


def suggest_params(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Ask ``trial`` for one value per entry of ``space``; returns ``{path: value}``."""
    params: dict[str, Any] = {}
    for path, spec in space.items():
        if spec.type == "categorical":
            params[path] = trial.suggest_categorical(path, spec.choices)
        elif spec.type == "int":
            step = int(spec.step or 1)
            params[path] = trial.suggest_int(
                path, int(spec.low), int(spec.high), step=step, log=spec.log
            )
        else:
            params[path] = trial.suggest_float(
                path, spec.low, spec.high, step=spec.step, log=spec.log
            )
    return params


def _grid_values(path: str, spec: SearchParam) -> list[Any]:
    if spec.grid is not None:
        return list(spec.grid)
    if spec.type == "categorical":
        return list(spec.choices or [])
    if spec.type == "int":
        return list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
    if spec.step is None:
        raise ConfigError(
            [
                f"tune.space.{path}: the grid sampler needs the values to try: give "
                "`grid: [...]` or a `step`"
            ]
        )
    count = math.floor((spec.high - spec.low) / spec.step + 1e-9) + 1
    return [round(spec.low + index * spec.step, 12) for index in range(count)]


def grid_points(space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """Every combination of the entries' grid values, in a fixed order (the first key slowest).

    Example:
        >>> from torchkd.config import SearchParam
        >>> space = {"a": SearchParam(type="int", low=1, high=2),
        ...          "b": SearchParam(type="float", low=0, high=1, grid=[0.5, 1.0])}
        >>> grid_points(space)
        [{'a': 1, 'b': 0.5}, {'a': 1, 'b': 1.0}, {'a': 2, 'b': 0.5}, {'a': 2, 'b': 1.0}]
    """
    names = list(space)
    values = [_grid_values(name, space[name]) for name in names]
    combinations = itertools.product(*values)
    return [dict(zip(names, combination, strict=True)) for combination in combinations]


def _check_space(raw: dict[str, Any], overrides: Sequence[str], recipe: Recipe) -> None:
    """Apply each entry's lowest value (or first choice) once, so a bad path fails up front.

    The recipe is validated and its loss terms are built (a misspelt ``loss_kwargs`` key is
    only caught by the loss itself).
    """
    from torchkd.config import build_terms

    assert recipe.tune is not None
    for path, spec in recipe.tune.space.items():
        if path.startswith("tune."):
            raise ConfigError([f"tune.space.{path}: the search cannot change the tune: section"])
        value = spec.choices[0] if spec.type == "categorical" else spec.low
        try:
            build_terms(recipe_from_dict(raw, [*overrides, *trial_overrides({path: value})]))
        except ConfigError as error:
            problems = [f"tune.space.{path}: {problem}" for problem in error.problems]
            raise ConfigError(problems) from None


# ------------------------------------------------------------------------------- the study


@dataclass
class _Job:
    """Everything a worker process needs (picklable)."""

    raw_recipe: dict[str, Any]
    overrides: list[str]
    out: str
    storage: str
    study_name: str
    trials: int
    sampler: str
    worker: int = 0
    threads: int = 0


class _GridPointSampler(optuna.samplers.BaseSampler):
    """A sampler that answers every suggestion from ``point`` (set before each ``ask``).

    The grid is walked by :func:`_claim_trial`, which sees the finished and running trials
    under the study lock: no point runs twice, and a point whose trial failed is tried again.
    """

    def __init__(self) -> None:
        self.point: dict[str, Any] = {}

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, Any]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: Any,
    ) -> Any:
        return self.point[param_name]


def _make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials, constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return _GridPointSampler()


def _make_pruner(
    name: str, startup_trials: int, warmup_epochs: int, epochs: int
) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, warmup_epochs), max_resource=epochs
        )
    return optuna.pruners.NopPruner()


def _fingerprint(raw: dict[str, Any], overrides: Sequence[str]) -> str:
    """A hash of the searched recipe and overrides, stored with the study.

    ``tune.trials`` is left out: asking for more trials extends the same search.
    """
    tune = {key: value for key, value in raw.get("tune", {}).items() if key != "trials"}
    text = json.dumps(
        {"recipe": {**raw, "tune": tune}, "overrides": list(overrides)}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open_study(job: _Job, recipe: Recipe, seed: int) -> optuna.Study:
    assert recipe.tune is not None
    tune = recipe.tune
    storage = optuna.storages.RDBStorage(
        job.storage, engine_kwargs={"connect_args": {"timeout": 120}}
    )
    sampler = _make_sampler(job.sampler, seed, tune.startup_trials)
    pruner = _make_pruner(tune.pruner, tune.startup_trials, tune.warmup_epochs, recipe.train.epochs)
    direction = "maximize" if tune.metric == "top1" else "minimize"
    return optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=job.study_name,
        direction=direction,
        load_if_exists=True,
    )


@contextlib.contextmanager
def _study_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (released by the OS if the process dies)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fail_orphans(study: optuna.Study, echo: Echo) -> None:
    """Mark failed the running trials whose process (on this host) no longer exists."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, pid = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if owner_host not in (None, host):
            continue  # another machine's trial: its own restart cleans it up
        if pid is not None and _process_alive(int(pid)):
            continue
        # a trial of another process: only the storage can still write to it
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, "failure", "its process ended mid-trial")
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        echo(f"trial {trial.number} was left running by a process that ended: marked failed")


def _params_key(params: dict[str, Any], names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(params.get(name) for name in names)


def _claim_trial(
    study: optuna.Study, job: _Job, space: dict[str, SearchParam], echo: Echo
) -> tuple[optuna.Trial, dict[str, Any]] | None:
    """Start the next trial, or ``None`` when finished + running trials reach ``job.trials``."""
    with _study_lock(Path(job.out) / "study.lock"):
        _fail_orphans(study, echo)
        taken = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        if len(taken) >= job.trials:
            return None
        if job.sampler == "grid":
            names = list(space)
            seen = {_params_key(trial.params, names) for trial in taken}
            pending = [p for p in grid_points(space) if _params_key(p, names) not in seen]
            if not pending:
                return None
            study.sampler.point = pending[0]
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = suggest_params(trial, space)
    return trial, params


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_trial(
    trial: optuna.Trial, params: dict[str, Any], job: _Job, metric: str
) -> tuple[str, float | None, str]:
    """Train one trial; returns ``(state name, objective value, note)``."""
    from torchkd.config import build_distiller
    from torchkd.train import NonFiniteLossError, fit, seed_everything

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

    seed_everything(recipe.train.seed)
    distiller = build_distiller(recipe)
    loaders = build_search_loaders(recipe.data, seed=recipe.train.seed)
    try:
        result = fit(
            distiller,
            loaders.train,
            loaders.val,
            recipe.train,
            run_dir,
            resolved_config=recipe.model_dump(mode="json"),
            report=False,
            on_epoch_end=report_epoch,
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


def _work(job: _Job, echo: Echo = print) -> None:
    """One worker: claim and run trials until the study holds ``job.trials`` finished ones."""
    if job.threads > 0:
        import torch

        torch.set_num_threads(job.threads)
    _quiet_optuna()
    recipe = recipe_from_dict(job.raw_recipe, job.overrides)
    assert recipe.tune is not None
    metric, space = recipe.tune.metric, recipe.tune.space
    study = _open_study(job, recipe, recipe.tune.seed)
    # a different seed per worker and per restart, so a resumed random search does not replay
    seed = recipe.tune.seed + 1000 * job.worker + len(study.trials)
    study.sampler = _make_sampler(job.sampler, seed, recipe.tune.startup_trials)
    failures = 0
    while (claimed := _claim_trial(study, job, space, echo)) is not None:
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
    job: _Job,
    number: int,
    outcome: tuple[str, float | None, str, float],
    params: dict[str, Any],
    metric: str,
    echo: Echo,
) -> None:
    state, value, note, seconds = outcome
    done = _count_finished(study)
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


def _worker_main(job: _Job) -> None:
    _work(job, lambda line: print(line, flush=True))


def _available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------ the search


@dataclass
class TuneResult:
    """What :func:`run_search` returns.

    Attributes:
        out: the search directory (``study.db``, ``trials/``, ``best/``, ``tune_report.md``).
        storage: the Optuna storage URL.
        study_name: the study's name.
        best_params: ``{dotted path: value}`` of the best trial.
        best_value: its validation metric.
        best_trial: its number.
        counts: trials per state (``COMPLETE``, ``PRUNED``, ``FAIL``, ...).
        importances: fANOVA importance per parameter (empty with fewer than two complete
            trials).
        test_metrics: the retrained best model's test metrics (``None`` without retraining).
        report_path: ``tune_report.md``.
        seconds: wall time of this call.
    """

    out: Path
    storage: str
    study_name: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    counts: dict[str, int]
    importances: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] | None = None
    report_path: Path | None = None
    seconds: float = 0.0


def _check_study_matches(study: optuna.Study, fingerprint: str, storage: str) -> None:
    stored = study.user_attrs.get("recipe_fingerprint")
    if stored is None:
        study.set_user_attr("recipe_fingerprint", fingerprint)
    elif stored != fingerprint:
        raise ConfigError(
            [
                f"{storage} holds a search of another recipe or other overrides (fingerprint "
                f"{stored}, now {fingerprint}); a search resumes only with the same recipe: use "
                "--out DIR (or --storage URL) for a new search"
            ]
        )


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
    _check_space(raw_recipe, overrides, recipe)
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
    job = _Job(
        raw_recipe=raw_recipe,
        overrides=list(overrides),
        out=str(out),
        storage=storage,
        study_name=recipe.name,
        trials=trials,
        sampler=sampler,
    )
    study = _open_study(job, recipe, tune.seed)
    _check_study_matches(study, _fingerprint(raw_recipe, overrides), storage)
    done = _count_finished(study)
    echo(
        f"study {recipe.name!r} in {storage}: {done} of {trials} trials finished; "
        f"sampler {sampler}, pruner {tune.pruner}, objective: validation {tune.metric}"
    )
    _run_workers(job, workers, echo)
    from torchkd.tune_report import summarize, write_tune_report

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
    result.report_path = write_tune_report(summary, result, command=command)
    return result


def _run_workers(job: _Job, workers: int, echo: Echo) -> None:
    if workers <= 1:
        _work(job, echo)
        return
    threads = max(1, _available_cpus() // workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index in range(workers):
        worker_job = _Job(**{**job.__dict__, "worker": index, "threads": threads})
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
    result = fit_recipe(recipe, run_dir, progress=False)
    return dict(result.test_metrics or {})


def load_raw_recipe(path: str | Path) -> dict[str, Any]:
    """The parsed YAML mapping of a recipe file (``yaml.safe_load``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError([f"<recipe>: not valid YAML ({error})"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(["<recipe>: expected a mapping at the top level"], str(path))
    return data
