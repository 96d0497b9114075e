"""What a training run returns (:class:`FitResult`) and the error that stops a diverging one
(:class:`NonFiniteLossError`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FitResult", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient.

    Attributes:
        terms: the terms whose value went non-finite during those steps (may be empty when
            only the total or the gradient did).
        step: the optimizer step at which training stopped.
    """

    def __init__(self, message: str, terms: list[str], step: int) -> None:
        super().__init__(message)
        self.terms = terms
        self.step = step

    @classmethod
    def after(
        cls, count: int, step: int, limit: int, terms: list[str], loss: float, grad_norm: float
    ) -> NonFiniteLossError:
        """The error after ``count`` non-finite steps in a row (the last at ``step``; ``limit``
        is ``max_consecutive_nonfinite``), naming the culprit: the non-finite ``terms`` if any,
        else the weighted total ``loss`` if it was not finite, else the ``grad_norm``.

        Example:
            >>> error = NonFiniteLossError.after(3, 7, 3, [], loss=1.0, grad_norm=float("inf"))
            >>> str(error).split("; ")[-1]
            'the loss was finite but the gradient norm was inf'
        """
        if terms:
            culprit = f"non-finite terms: {', '.join(map(repr, terms))}"
        elif not math.isfinite(loss):
            culprit = "every term was finite but the weighted total was not (check the weights)"
        else:
            culprit = f"the loss was finite but the gradient norm was {grad_norm}"
        return cls(
            f"{count} consecutive optimizer steps had a non-finite "
            f"loss or gradient (the last at step {step}; "
            f"max_consecutive_nonfinite={limit}); {culprit}",
            terms=list(terms),
            step=step,
        )


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        run_dir: the run directory.
        best_metrics: validation metrics of the best epoch (highest ``top1``; lowest ``loss``
            when the validation set has no labels).
        best_epoch: that epoch (1-based; 0 when no epoch was trained).
        final_metrics: validation metrics after the last epoch.
        test_metrics: metrics of the final model on ``test_loader`` (``None`` without one).
        history: one record per epoch (the ``"epoch"`` records of ``metrics.jsonl``).
        nonfinite_steps: optimizer steps skipped for a non-finite loss or gradient.
        last_checkpoint: ``checkpoints/last.pt``.
        best_checkpoint: ``checkpoints/best.pt`` (``None`` if never written).
        metrics_path: ``metrics.jsonl``.
        report_path: ``report.md``, set by the caller that writes it
            (:func:`torchkd.config.fit_recipe`); ``None`` otherwise.
        best_test_metrics: metrics of ``best_checkpoint`` (the weights other recipes load) on
            the test split, set by :func:`torchkd.config.fit_recipe` in a single process;
            ``None`` otherwise.
    """

    run_dir: Path
    best_metrics: dict[str, float]
    best_epoch: int
    final_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    history: list[dict[str, Any]]
    nonfinite_steps: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    metrics_path: Path
    report_path: Path | None = None
    best_test_metrics: dict[str, float] | None = None
