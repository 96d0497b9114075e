"""Resume means the same run: a recipe that differs from the run's own is refused with a
readable diff (exit 2, nothing written); more epochs is the one change allowed, with the
learning-rate schedule re-planned over the new total; a changed model is refused readably."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchkd.cli import main
from torchkd.config import LRScheduleConfig, OptimizerConfig
from torchkd.train import CheckpointError, fit
from torchkd.train.optim import LRSchedule

RECIPE = {
    "name": "resumed",
    "data": {"dataset": "digits", "batch_size": 512},
    "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [16]}},
    "terms": [{"name": "ce", "loss": "ce"}],
    "train": {
        "epochs": 2,
        "optimizer": {"name": "adam", "lr": 0.01},
        "lr_schedule": {"name": "cosine"},
        "log_every_steps": 1,
        "progress": False,
        "device": "cpu",
    },
}


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Path, Path]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 0
    return recipe, run_dir


def digests(run_dir: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and "tb" not in path.parts
    }


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.optimizer.lr=0.5"], "train.optimizer.lr: 0.01 -> 0.5"),
        (["student.kwargs.hidden=[32]"], "student.kwargs.hidden.0: 16 -> 32"),
        (["train.epochs=1"], "train.epochs: 2 -> 1 (a run can be extended, not shortened)"),
        (["train.epochs=4", "data.batch_size=256"], "data.batch_size: 512 -> 256"),
    ],
)
def test_resume_with_another_recipe_is_refused_with_a_diff(
    trained: tuple[Path, Path],
    overrides: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe, run_dir = trained
    before = digests(run_dir)
    capsys.readouterr()
    assert main(["train", str(recipe), *overrides, "--run-dir", str(run_dir), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "--resume: the recipe differs" in error and expected in error, error
    assert digests(run_dir) == before  # nothing written: config.yaml, checkpoints, metrics


def test_more_epochs_continue_on_a_replanned_schedule(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, run_dir = trained
    capsys.readouterr()
    argv = ["train", str(recipe), "train.epochs=4", "train.progress=true"]
    assert main([*argv, "--run-dir", str(run_dir), "--resume"]) == 0
    assert "re-planned over 4 epochs" in capsys.readouterr().err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3, 4]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == 4
    steps = [r for r in records if r["kind"] == "step"]
    steps_per_epoch = len(steps) // 4
    optimizer = torch.optim.Adam(nn.Linear(1, 1).parameters(), lr=0.01)
    plans = {
        epochs: LRSchedule(
            optimizer, LRScheduleConfig(name="cosine"), steps_per_epoch, epochs * steps_per_epoch
        )
        for epochs in (2, 4)
    }
    for record in steps:  # records are logged after the step they describe
        step = record["step"] - 1
        plan = plans[2] if step < 2 * steps_per_epoch else plans[4]
        assert record["lr"] == pytest.approx(plan.rate(step))


def test_a_changed_model_is_refused_readably(tmp_path: Path) -> None:
    from torchkd.config import TrainConfig
    from torchkd.distiller import Distiller, Term

    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,)))
    config = TrainConfig(
        epochs=1, optimizer=OptimizerConfig(name="sgd", lr=0.1), progress=False, device="cpu"
    )
    first = Distiller(nn.Linear(4, 3), None, [Term("ce", "ce")])
    fit(first, DataLoader(data, 16), DataLoader(data, 16), config, tmp_path)
    changed = Distiller(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)), None, [Term("ce", "ce")])
    config = config.model_copy(update={"epochs": 2})
    with pytest.raises(
        CheckpointError, match=r"student weights do not fit the model being resumed"
    ):
        fit(changed, DataLoader(data, 16), DataLoader(data, 16), config, tmp_path, resume=True)
