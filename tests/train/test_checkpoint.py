"""Checkpoints: atomic writes, corrupt files, safe loading, export, RNG state round trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from torchkd._files import atomic_write
from torchkd.config import TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.distiller import Distiller, Term
from torchkd.train import (
    CheckpointError,
    export_student,
    fit,
    load_checkpoint,
    load_student_weights,
    save_checkpoint,
)
from torchkd.train.rng import capture_rng_state, restore_rng_state


def minimal_checkpoint(value: float = 1.0) -> dict[str, object]:
    return {
        "student": {"weight": torch.full((2, 2), value)},
        "extras": {},
        "optimizer": {},
        "rng": capture_rng_state(),
        "progress": {"epoch": 1},
        "config": {"train": {"epochs": 1}},
    }


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = save_checkpoint(minimal_checkpoint(), tmp_path / "checkpoints" / "last.pt")
    save_checkpoint(minimal_checkpoint(2.0), path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["student"]["weight"][0, 0] == 2.0


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(minimal_checkpoint(1.0), tmp_path / "last.pt")

    def half_then_interrupt(stream: object) -> None:
        stream.write(path.read_bytes()[:100])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_interrupt)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["student"]["weight"][0, 0] == 1.0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    good = save_checkpoint(minimal_checkpoint(), tmp_path / "checkpoints" / "best.pt")
    damaged = tmp_path / "checkpoints" / "last.pt"
    content = good.read_bytes()
    damaged.write_bytes(
        {"truncate": content[: len(content) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[
            damage
        ]
    )
    with pytest.raises(CheckpointError, match=r"last\.pt is truncated or corrupt \(.+\)"):
        load_checkpoint(damaged)
    assert load_checkpoint(good)["progress"] == {"epoch": 1}  # the good one is still there


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nothing.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a torchkd checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"format": "torchkd.checkpoint", "object": nn.Linear(1, 1)}, tmp_path / "x.pt")
    with pytest.raises(
        CheckpointError, match=r"x\.pt holds a Python object \(torch\.nn\..*Linear\)"
    ):
        load_checkpoint(tmp_path / "x.pt")


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    path = save_checkpoint({**minimal_checkpoint(), "rng": capture_rng_state()}, tmp_path / "c")
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    restore_rng_state(load_checkpoint(path)["rng"])
    drawn = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    assert drawn[:3] == expected[:3]
    assert torch.equal(drawn[3], expected[3])


def _trained_run(run_dir: Path) -> Distiller:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(32, 4, generator=generator)
    data = TensorDictDataset(inputs, (inputs[:, 0] > 0).long())
    train = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator())
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    teacher = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 2))
    terms = [
        Term("ce", "ce"),
        Term("hint", "hint", student="1", teacher="1", adapter="linear"),
    ]
    distiller = Distiller(student, teacher, terms)
    config = TrainConfig(epochs=1, device="cpu", progress=False)
    fit(distiller, train, DataLoader(data, batch_size=16), config, run_dir)
    return distiller


def test_fit_checkpoint_layout_and_export(tmp_path: Path) -> None:
    distiller = _trained_run(tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert {"student", "extras", "optimizer", "lr_schedule", "scaler", "rng", "epoch_rng"} <= set(
        checkpoint
    )
    assert checkpoint["progress"]["epoch"] == 1 and checkpoint["progress"]["step"] == 4
    assert any("adapter" in name for name in checkpoint["extras"])  # the hint's linear adapter
    assert checkpoint["config"]["train"]["epochs"] == 1

    exported = export_student(
        tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "student.safetensors"
    )
    tensors = load_file(exported)
    assert set(tensors) == set(distiller.student.state_dict())  # no extras
    for name, value in distiller.student.state_dict().items():
        assert torch.equal(tensors[name], value)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_from_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    _trained_run(tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:-300])
    with pytest.raises(CheckpointError, match=r"checkpoints/last\.pt is truncated or corrupt"):
        load_checkpoint(last)


def test_load_student_weights_accepts_three_formats(tmp_path: Path) -> None:
    state = {"weight": torch.arange(4.0).reshape(2, 2), "bias": torch.ones(2)}
    save_checkpoint({**minimal_checkpoint(), "student": state}, tmp_path / "run.pt")
    torch.save(state, tmp_path / "plain.pt")
    export_student(tmp_path / "run.pt", tmp_path / "weights.safetensors")
    for name in ("run.pt", "plain.pt", "weights.safetensors"):
        loaded = load_student_weights(tmp_path / name)
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors is truncated or corrupt"):
        load_student_weights(tmp_path / "bad.safetensors")
