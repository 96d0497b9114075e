"""The Optuna study behind a search: samplers and pruners, the SQLite storage, the recipe
fingerprint a study is bound to, and claiming trials under a file lock so several worker
processes share one study without running more than ``trials``."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from torchkd.config import ConfigError, Recipe, SearchParam
from torchkd.tune.space import grid_points, suggest_params

__all__ = [
    "Job",
    "check_study_matches",
    "claim_trial",
    "count_finished",
    "fingerprint",
    "make_sampler",
    "open_study",
]

Echo = Callable[[str], None]


@dataclass
class Job:
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


def make_sampler(name: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
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


def fingerprint(raw: dict[str, Any], overrides: Sequence[str]) -> str:
    """A hash of the searched recipe and overrides, stored with the study.

    ``tune.trials`` is left out: asking for more trials extends the same search.
    """
    tune = {key: value for key, value in raw.get("tune", {}).items() if key != "trials"}
    text = json.dumps(
        {"recipe": {**raw, "tune": tune}, "overrides": list(overrides)}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_study(job: Job, recipe: Recipe, seed: int) -> optuna.Study:
    assert recipe.tune is not None
    tune = recipe.tune
    storage = optuna.storages.RDBStorage(
        job.storage, engine_kwargs={"connect_args": {"timeout": 120}}
    )
    sampler = make_sampler(job.sampler, seed, tune.startup_trials)
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


def claim_trial(
    study: optuna.Study, job: Job, space: dict[str, SearchParam], echo: Echo
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


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def check_study_matches(study: optuna.Study, fingerprint: str, storage: str) -> None:
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
