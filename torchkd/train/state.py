"""Bookkeeping of one training run: where it stands (:class:`Progress`, saved in checkpoints),
per-step values summed on the device (:class:`StepSums`), the micro-batches of one optimizer
step (:class:`StepGroup`) and deferred Ctrl-C handling (:class:`InterruptFlag`)."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchkd.train.checkpoint import CheckpointError

__all__ = ["COUNTS", "InterruptFlag", "Progress", "StepGroup", "StepSums"]

COUNTS = ("steps", "samples")


@dataclass
class Progress:
    """Where training stands; saved in checkpoints as the ``"progress"`` entry."""

    num_batches: int
    epoch: int = 0  # finished epochs
    batches_done: int = 0  # batches of the current epoch already trained
    step: int = 0  # optimizer steps taken (skipped ones included)
    best_metric: float | None = None
    best_epoch: int = 0
    nonfinite_steps: int = 0
    consecutive_nonfinite: int = 0
    nonfinite_terms: list[str] = field(default_factory=list)
    epoch_totals: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def resumed(
        cls, saved: Mapping[str, Any], path: Path, num_batches: int, epochs: int
    ) -> Progress:
        """The progress a checkpoint saved (``saved``, read from ``path``), to resume a run
        whose train loader has ``num_batches`` batches and that trains ``epochs`` epochs.

        Raises:
            CheckpointError: the checkpoint stopped inside an epoch of another size, or has
                trained more than ``epochs`` epochs.
        """
        progress = cls(**saved)
        if progress.batches_done and progress.num_batches != num_batches:
            raise CheckpointError(
                f"{path} stopped inside an epoch of {progress.num_batches} batches, but the train "
                f"loader now has {num_batches}: the data or batch size changed"
            )
        progress.num_batches = num_batches
        if progress.epoch > epochs:
            raise CheckpointError(
                f"{path} has trained {progress.epoch} epochs but train.epochs is now "
                f"{epochs}: a run can be extended on resume, not shortened"
            )
        return progress

    def count_nonfinite(self, terms: Mapping[str, float]) -> None:
        """Count a step skipped as non-finite; ``terms`` (the step's term values) adds the
        non-finite ones to ``nonfinite_terms``."""
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        bad = [name for name, value in terms.items() if not math.isfinite(value)]
        self.nonfinite_terms = sorted({*self.nonfinite_terms, *bad})

    def finish_epoch(self, epoch: int, record: dict[str, Any] | None = None) -> bool:
        """Count ``epoch`` (0-based) as finished; an evaluated epoch's ``record`` joins
        ``history`` and becomes the best when its score is finite and higher than the best so
        far (higher is better: validation ``top1``, else minus the validation ``loss``).

        Returns whether the epoch became the best.
        """
        self.epoch, self.batches_done = epoch + 1, 0
        if record is None:
            return False
        val = record["val"]
        score = val["top1"] if "top1" in val else -val.get("loss", math.nan)
        improved = math.isfinite(score) and (self.best_metric is None or score > self.best_metric)
        self.history.append(record)
        if improved:
            self.best_metric, self.best_epoch = score, epoch + 1
        return improved


@dataclass
class StepSums:
    """Sums of per-step values over a window of optimizer steps (finite steps only).

    Each step adds one device tensor ``[loss, grad_norm, *terms]`` to ``pending``; the values
    reach the host (one sync) only when :meth:`drain` is called.
    """

    steps: int = 0
    samples: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    pending: list[Tensor] = field(default_factory=list)
    pending_names: list[str] = field(default_factory=list)

    @classmethod
    def resumed(cls, summary: Mapping[str, float]) -> StepSums:
        """Sums that go on from a :meth:`summary` (an epoch's, saved in :class:`Progress`)."""
        return cls(
            steps=int(summary.get("steps", 0)),
            samples=int(summary.get("samples", 0)),
            totals={k: v for k, v in summary.items() if k not in COUNTS},
        )

    def add(self, values: Tensor, names: list[str], samples: int) -> None:
        if self.pending and names != self.pending_names:
            self.drain()
        self.pending.append(values)
        self.pending_names = names
        self.steps += 1
        self.samples += samples

    def drain(self) -> dict[str, float]:
        """Move the pending device values into ``totals`` (one host sync); return ``totals``."""
        if self.pending:
            summed = torch.stack(self.pending).sum(dim=0).tolist()
            for name, value in zip(self.pending_names, summed, strict=True):
                self.totals[name] = self.totals.get(name, 0.0) + value
            self.pending = []
        return self.totals

    def summary(self) -> dict[str, float]:
        """``steps``, ``samples`` and each value's sum, read to the host (``{}`` before a step)."""
        totals = self.drain()
        if not self.steps:
            return {}
        return {"steps": float(self.steps), "samples": float(self.samples), **totals}

    def means(self) -> dict[str, float]:
        """Each value's mean over the steps (``{}`` before a step)."""
        count = max(self.steps, 1)
        return {name: value / count for name, value in self.drain().items()}


@dataclass
class StepGroup:
    """The micro-batches of one optimizer step: detached loss sums and the last output.

    ``reduce`` maps the step's values to their mean over the processes of a distributed run
    (applied once; the finiteness test reads the reduced values, so every process decides
    alike).
    """

    size: int
    samples: int = 0
    loss_sum: Tensor | None = None
    term_sums: dict[str, Tensor] = field(default_factory=dict)
    last_output: Any = None
    reduce: Callable[[Tensor], Tensor] | None = None
    reduced: tuple[Tensor, list[str]] | None = None

    def add(self, output: Any) -> None:
        self.samples += output.num_samples
        loss = output.loss.detach().float()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        for name, value in output.terms.items():
            value = value.detach().float()
            self.term_sums[name] = value + self.term_sums[name] if name in self.term_sums else value
        self.last_output = output

    def values(self, grad_norm: Tensor) -> tuple[Tensor, list[str]]:
        """``[mean loss, grad_norm, *mean terms]`` as one device tensor, and its names."""
        if self.reduced is not None:
            return self.reduced
        names = ["loss", "grad_norm", *(f"terms/{name}" for name in self.term_sums)]
        sums = [self.loss_sum, *self.term_sums.values()]
        means = sums if self.size == 1 else [value / self.size for value in sums]
        values = torch.stack([means[0], grad_norm.to(means[0]), *means[1:]])
        if self.reduce is None:
            return values, names
        self.reduced = (self.reduce(values), names)
        return self.reduced

    def host_values(self, grad_norm: Tensor) -> tuple[float, float, dict[str, float]]:
        """The mean loss, ``grad_norm`` and mean terms (by name) of :meth:`values`, on the host."""
        values, names = self.values(grad_norm)
        named = dict(zip(names, values.tolist(), strict=True))
        loss, norm = named.pop("loss"), named.pop("grad_norm")
        return loss, norm, {k.removeprefix("terms/"): v for k, v in named.items()}

    def all_finite(self, grad_norm: Tensor) -> bool:
        """Whether the loss and the gradient norm are finite (one fused test, one sync)."""
        if self.reduce is not None:
            values = self.values(grad_norm)[0]
            return bool(torch.isfinite(values[0] + values[1]))
        return bool(torch.isfinite(self.loss_sum + grad_norm.to(self.loss_sum)))

    def weights(self) -> dict[str, float]:
        """The last micro-batch's term weights and temperatures (``temperature/<term>``)."""
        output = self.last_output
        weights = {name: float(value) for name, value in output.weights.items()}
        temperatures = getattr(output, "temperatures", None) or {}
        weights.update({f"temperature/{name}": float(v) for name, v in temperatures.items()})
        return weights


class InterruptFlag:
    """Ctrl-C (SIGINT) handling for one :func:`fit` call.

    The first Ctrl-C only sets :attr:`pending`; the trainer checks it at step and epoch
    boundaries (:meth:`check`), so a step's state changes commit whole. A second Ctrl-C raises
    ``KeyboardInterrupt`` at once. Outside the main thread no handler can be installed and
    nothing is deferred.
    """

    def __init__(self) -> None:
        self.pending = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    @contextmanager
    def installed(self) -> Iterator[InterruptFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived since the handler was installed."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
