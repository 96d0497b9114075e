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
:func:`torchkd.config.fit_recipe` -- the same path as ``torchkd train`` -- on the training and
validation splits only (``evaluate_test=False``: the test split is never built, so it cannot
leak into the choice). The objective is the final epoch's metric on the *validation* split
carved from the training data; each epoch's validation value is reported to the pruner
(median or Hyperband), which may stop a trial early.

Trials live in an Optuna study stored in SQLite (``runs/<name>/study.db`` by default), so a
search stopped at any moment continues where it stopped: trials left running by a process that
died are marked failed, and new trials are started until exactly ``trials`` are finished
(complete or pruned). Trials are claimed under a file lock (``study.lock``), so ``workers``
processes share one study without starting more than ``trials`` between them.

The best parameters are retrained once on the full recipe and only that model is evaluated on
the test split; ``tune_report.md`` holds the best parameters, every trial, the parameter
importances and the plots (see :mod:`torchkd.tune.report`).

Optuna, scikit-learn (fANOVA) and matplotlib are the ``tune`` extra
(``pip install 'torchkd[tune]'``): importing this package without them raises ``ImportError``
with that line.

TPE is the tree-structured Parzen estimator (Bergstra et al., "Algorithms for
Hyper-Parameter Optimization", NeurIPS 2011); Hyperband is Li et al., JMLR 2018.
"""

from __future__ import annotations

from torchkd._extras import require

for _module in ("optuna", "sklearn", "matplotlib"):  # the search, its importances, its plots
    require(_module, "tune", "torchkd.tune (hyperparameter search)")

# after the check, so a missing extra is named before any submodule fails on its import
from torchkd.tune.result import TuneResult  # noqa: E402
from torchkd.tune.search import run_search  # noqa: E402
from torchkd.tune.space import grid_points, suggest_params, trial_overrides  # noqa: E402

__all__ = ["TuneResult", "grid_points", "run_search", "suggest_params", "trial_overrides"]
