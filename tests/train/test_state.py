"""The run bookkeeping of torchkd.train.state: resuming a saved Progress, finishing epochs,
counting non-finite steps and carrying an epoch's sums across a resume."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from torchkd.train.checkpoint import CheckpointError
from torchkd.train.state import Progress, StepSums


def test_resumed_takes_the_loaders_batch_count_between_epochs() -> None:
    saved = asdict(Progress(num_batches=5, epoch=2, step=10))
    progress = Progress.resumed(saved, Path("last.pt"), num_batches=7, epochs=4)
    assert (progress.num_batches, progress.epoch, progress.step) == (7, 2, 10)


def test_resumed_refuses_an_epoch_of_another_size() -> None:
    saved = asdict(Progress(num_batches=5, batches_done=3))
    with pytest.raises(
        CheckpointError,
        match=r"last\.pt stopped inside an epoch of 5 batches, but the train loader now has 7: "
        r"the data or batch size changed",
    ):
        Progress.resumed(saved, Path("last.pt"), num_batches=7, epochs=4)


def test_resumed_refuses_fewer_epochs() -> None:
    saved = asdict(Progress(num_batches=5, epoch=3))
    with pytest.raises(
        CheckpointError,
        match=r"last\.pt has trained 3 epochs but train\.epochs is now 2: a run can be extended "
        r"on resume, not shortened",
    ):
        Progress.resumed(saved, Path("last.pt"), num_batches=5, epochs=2)


def test_finish_epoch_keeps_the_best_finite_score() -> None:
    progress = Progress(num_batches=1)
    assert progress.finish_epoch(0, {"val": {"top1": 0.5}})
    assert not progress.finish_epoch(1)  # not evaluated
    assert not progress.finish_epoch(2, {"val": {"top1": 0.4}})
    assert not progress.finish_epoch(3, {"val": {"top1": math.nan}})
    assert progress.finish_epoch(4, {"val": {"top1": 0.6}})
    assert (progress.epoch, progress.best_epoch, progress.best_metric) == (5, 5, 0.6)
    assert len(progress.history) == 4


def test_finish_epoch_without_top1_prefers_the_lower_loss() -> None:
    progress = Progress(num_batches=1)
    assert progress.finish_epoch(0, {"val": {"loss": 2.0}})
    assert progress.finish_epoch(1, {"val": {"loss": 1.0}})
    assert (progress.best_epoch, progress.best_metric) == (2, -1.0)


def test_count_nonfinite_names_the_nonfinite_terms() -> None:
    progress = Progress(num_batches=1, nonfinite_terms=["kd"])
    progress.count_nonfinite({"ce": math.inf, "kd": 1.0, "at": math.nan})
    assert (progress.nonfinite_steps, progress.consecutive_nonfinite) == (1, 1)
    assert progress.nonfinite_terms == ["at", "ce", "kd"]


def test_step_sums_summary_resumes_to_the_same_sums() -> None:
    sums = StepSums()
    assert sums.summary() == {} and sums.means() == {}
    for value in (1.0, 3.0):
        sums.add(torch.tensor([value, 2 * value]), ["loss", "grad_norm"], samples=4)
    summary = sums.summary()
    assert summary == {"steps": 2.0, "samples": 8.0, "loss": 4.0, "grad_norm": 8.0}
    resumed = StepSums.resumed(summary)
    assert resumed.summary() == summary
    assert resumed.means() == {"loss": 2.0, "grad_norm": 4.0}
