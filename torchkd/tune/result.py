"""What a search returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TuneResult"]


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
