"""The trainer's cadence: evaluating every N epochs, and Ctrl-C handled at step boundaries."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchkd.config import TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.distiller import Distiller, Term
from torchkd.train import fit, load_checkpoint
from torchkd.train.logging import read_jsonl


class SignalAtStep(nn.Module):
    """Cross-entropy that sends this process a real SIGINT during the forward of ``step``."""

    signature = "labels"

    def __init__(self, signal_step: int | None = None) -> None:
        super().__init__()
        self.signal_step = signal_step
        self.step = 0
        self.calls_after_signal = 0

    def set_progress(self, step: int, total_steps: int) -> None:
        self.step = step

    def forward(self, student_logits: Tensor, labels: Tensor) -> Tensor:
        if self.training and self.signal_step is not None:
            if self.step == self.signal_step:
                os.kill(os.getpid(), signal.SIGINT)
                self.signal_step = None
        elif self.training:
            self.calls_after_signal += 1
        return F.cross_entropy(student_logits, labels)


def make_run(tmp_path: Path, loss: nn.Module, **overrides: object) -> tuple[Distiller, object]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(40, 5, generator=generator)
    labels = (inputs[:, 0] > 0).long()
    train = DataLoader(
        TensorDictDataset(inputs, labels),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(TensorDictDataset(inputs[:16], labels[:16]), batch_size=8)
    distiller = Distiller(nn.Sequential(nn.Dropout(0.1), nn.Linear(5, 2)), None, [Term("ce", loss)])
    settings = {"epochs": 5, "device": "cpu", "progress": False, "log_every_steps": 2}
    config = TrainConfig.model_validate({**settings, **overrides})
    return distiller, lambda **kw: fit(distiller, train, val, config, tmp_path, **kw)


def test_eval_every_epochs_evaluates_every_n_and_after_the_last(tmp_path: Path) -> None:
    seen: list[int] = []
    _, run = make_run(tmp_path, SignalAtStep(), eval_every_epochs=2)
    result = run(on_epoch_end=lambda record: seen.append(record["epoch"]))
    assert [record["epoch"] for record in result.history] == [2, 4, 5]
    assert seen == [2, 4, 5]
    logged = [r["epoch"] for r in read_jsonl(result.metrics_path) if r["kind"] == "epoch"]
    assert logged == [2, 4, 5]
    assert result.best_epoch in (2, 4, 5)
    assert load_checkpoint(result.last_checkpoint)["progress"]["epoch"] == 5
    assert load_checkpoint(result.best_checkpoint)["progress"]["epoch"] == result.best_epoch
    with pytest.raises(ValueError, match="eval_every_epochs"):
        TrainConfig(eval_every_epochs=0)


def test_sigint_stops_at_the_step_boundary_and_resumes(tmp_path: Path) -> None:
    loss = SignalAtStep(signal_step=7)
    distiller, run = make_run(tmp_path / "run", loss)
    with pytest.raises(KeyboardInterrupt):
        run()
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["step"] == 8  # step 7 finished before stopping
    assert loss.calls_after_signal == 0  # no further step started
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    torch.testing.assert_close(
        checkpoint["student"]["1.weight"], distiller.student[1].weight, rtol=0, atol=0
    )

    straight_distiller, straight = make_run(tmp_path / "straight", SignalAtStep())
    straight()
    _, resumed = make_run(tmp_path / "run", SignalAtStep())
    resumed_result = resumed(resume=True)
    resumed_weights = load_checkpoint(resumed_result.last_checkpoint)["student"]
    for name, value in straight_distiller.student.state_dict().items():
        assert torch.equal(resumed_weights[name], value), name
