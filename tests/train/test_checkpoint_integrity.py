"""Checkpoints whose bytes are checked: damaged tensor data is refused, never trained on."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from torchkd import _files as files_module
from torchkd.config import TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.distiller import Distiller, Term
from torchkd.train import (
    CheckpointError,
    export_student,
    fit,
    load_checkpoint,
    load_student_weights,
    remove_stale_temporaries,
    save_checkpoint,
)
from torchkd.train.rng import capture_rng_state

fcntl = pytest.importorskip("fcntl")


def flip_bytes_of(path: Path, tensor: torch.Tensor, count: int = 16) -> int:
    """Invert ``count`` bytes in the middle of ``tensor``'s data where ``path`` stores it.

    The tensor's raw bytes are found in the file itself (both formats store them
    uncompressed), so the damage lands in the tensor data, not in a header. Returns the offset.
    """
    raw = bytearray(path.read_bytes())
    data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    assert len(data) >= 2 * count
    start = raw.find(data)
    assert start >= 0 and raw.find(data, start + 1) < 0, "the tensor's bytes must occur once"
    offset = start + len(data) // 2 - count // 2
    for index in range(offset, offset + count):
        raw[index] ^= 0xFF
    path.write_bytes(bytes(raw))
    return offset


def minimal_checkpoint(value: float = 1.0) -> dict[str, object]:
    return {
        "student": {"weight": torch.full((4, 4), value), "bias": torch.arange(4.0)},
        "extras": {},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]},
        "rng": capture_rng_state(),
        "progress": {"epoch": 1, "history": [{"val": {"top1": 0.5}}]},
        "config": {"train": {"epochs": 1}},
    }


@pytest.fixture
def run(tmp_path: Path) -> dict[str, object]:
    """A real two-epoch run: best.pt, last.pt and epoch_001.pt / epoch_002.pt."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 6, generator=generator)
    data = TensorDictDataset(inputs, (inputs[:, 0] > 0).long())

    def train(resume: bool = False) -> None:
        torch.manual_seed(0)
        student = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
        teacher = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        distiller = Distiller(student, teacher, [Term("ce", "ce"), Term("kd", "kd", weight=0.5)])
        config = TrainConfig(
            epochs=2, device="cpu", progress=False, keep_teacher_checkpoints_every=1
        )
        train_loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator())
        val_loader = DataLoader(data, batch_size=32)
        fit(distiller, train_loader, val_loader, config, run_dir, resume=resume)

    run_dir = tmp_path / "run"
    train()
    return {"dir": run_dir / "checkpoints", "train": train}


def test_flipped_tensor_bytes_in_last_pt_are_refused_naming_the_file(
    run: dict[str, object],
) -> None:
    checkpoints: Path = run["dir"]
    last = checkpoints / "last.pt"
    weight = load_checkpoint(last)["student"]["0.weight"]
    flip_bytes_of(last, weight)
    # the damage is inside a tensor record (the zip's CRC of that record no longer matches) ...
    with zipfile.ZipFile(last) as archive:
        assert archive.testzip() is not None
    # ... and torch's own loader does not notice: it returns the damaged weights
    silently = torch.load(last, map_location="cpu", weights_only=True)["student"]["0.weight"]
    assert not torch.equal(silently, weight)

    with pytest.raises(CheckpointError, match=r"checkpoints/last\.pt is damaged: .*SHA-256"):
        load_checkpoint(last)
    with pytest.raises(CheckpointError, match=r"checkpoints/last\.pt is damaged"):
        load_student_weights(last)
    for other in ("best.pt", "epoch_001.pt", "epoch_002.pt"):
        assert set(load_checkpoint(checkpoints / other)["student"]) == {
            "0.weight",
            "0.bias",
            "2.weight",
            "2.bias",
        }


def test_resume_from_a_damaged_last_pt_refuses_and_writes_nothing(
    run: dict[str, object],
) -> None:
    checkpoints: Path = run["dir"]
    last = checkpoints / "last.pt"
    flip_bytes_of(last, load_checkpoint(last)["optimizer"]["state"][0]["exp_avg_sq"])
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    with pytest.raises(CheckpointError, match=r"last\.pt is damaged"):
        run["train"](resume=True)
    after = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    assert after == before  # no checkpoint was overwritten, none was added


def test_a_changed_number_outside_the_tensors_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(minimal_checkpoint(), tmp_path / "last.pt")
    stored = torch.load(path, weights_only=True)
    stored["progress"]["epoch"] = 7  # the pickled structure changed, the digest kept
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match=r"last\.pt is damaged"):
        load_checkpoint(path)


def test_undamaged_round_trip_is_exact(tmp_path: Path) -> None:
    original = minimal_checkpoint(2.5)
    loaded = load_checkpoint(save_checkpoint(original, tmp_path / "c.pt"))
    assert "sha256" not in loaded and loaded["version"] == 2
    assert torch.equal(loaded["student"]["weight"], original["student"]["weight"])
    assert loaded["progress"] == original["progress"]
    assert loaded["rng"]["python"] == original["rng"]["python"]
    assert torch.equal(loaded["rng"]["torch"], original["rng"]["torch"])
    # a loaded checkpoint saves again (a version 1 one gains its digest that way)
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "d.pt"))
    assert torch.equal(again["optimizer"]["state"][0]["step"], torch.tensor(3.0))


def test_version_1_checkpoint_without_digest_loads_with_a_warning(tmp_path: Path) -> None:
    legacy = {"format": "torchkd.checkpoint", "version": 1, **minimal_checkpoint()}
    torch.save(legacy, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match=r"old\.pt was written by an older torchkd .*no SHA-256"):
        loaded = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded["student"]["weight"], torch.ones(4, 4))
    upgraded = save_checkpoint(loaded, tmp_path / "old.pt")
    assert load_checkpoint(upgraded)["version"] == 2  # no warning: pytest errors on none


def test_version_2_checkpoint_without_digest_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(minimal_checkpoint(), tmp_path / "c.pt")
    stored = torch.load(path, weights_only=True)
    del stored["sha256"]
    torch.save(stored, path)
    with pytest.raises(CheckpointError, match=r"c\.pt is damaged: its SHA-256 digest is missing"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------- safetensors


def test_damaged_export_is_refused_naming_the_file(tmp_path: Path) -> None:
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    original = minimal_checkpoint()
    original["student"]["weight"] = weight
    checkpoint = save_checkpoint(original, tmp_path / "c.pt")
    exported = export_student(checkpoint, tmp_path / "student.safetensors")
    assert torch.equal(load_student_weights(exported)["weight"], weight)
    flip_bytes_of(exported, weight)
    assert not torch.equal(load_file(exported)["weight"], weight)  # safetensors alone reads it
    with pytest.raises(CheckpointError, match=r"student\.safetensors is damaged: its tensors"):
        load_student_weights(exported)


def test_export_round_trip_is_exact_and_foreign_safetensors_load(tmp_path: Path) -> None:
    original = minimal_checkpoint()
    original["student"]["half"] = torch.randn(3, 5).to(torch.bfloat16)
    checkpoint = save_checkpoint(original, tmp_path / "c.pt")
    loaded = load_student_weights(export_student(checkpoint, tmp_path / "s.safetensors"))
    assert loaded.keys() == original["student"].keys()
    for name, value in original["student"].items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value)
    save_file({"w": torch.ones(2)}, tmp_path / "foreign.safetensors")  # no torchkd digest
    assert torch.equal(load_student_weights(tmp_path / "foreign.safetensors")["w"], torch.ones(2))


# ---------------------------------------------------------------------- stale temporaries


def test_save_removes_stale_temporaries_and_keeps_other_files(tmp_path: Path) -> None:
    stale = [
        tmp_path / ".last.pt.k2x_9abc.tmp",
        tmp_path / ".epoch_003.pt.0a1b2c3d.tmp",
        tmp_path / ".student.safetensors.zzzzzzzz.tmp",
    ]
    kept = [
        tmp_path / "notes.tmp",
        tmp_path / ".last.pt.tmp",
        tmp_path / ".last.pt.ABCDEFGH.tmp",
        tmp_path / "last.pt.k2x_9abc.tmp",
        tmp_path / ".notes.txt.k2x_9abc.tmp",  # not a checkpoint's
    ]
    for path in stale + kept:
        path.write_bytes(b"partial")
    live = tmp_path / ".best.pt.livewrit.tmp"  # a write in progress holds its lock
    live.write_bytes(b"partial")
    with open(live, "rb+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        save_checkpoint(minimal_checkpoint(), tmp_path / "last.pt")
        assert live.exists()
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)
    assert remove_stale_temporaries(tmp_path) == [live]  # its writer is gone now


def test_a_killed_write_leaves_a_temporary_that_the_next_save_removes(tmp_path: Path) -> None:
    last = save_checkpoint(minimal_checkpoint(1.0), tmp_path / "last.pt")
    killed_write = (
        "import os, signal, sys\n"
        "from torchkd._files import atomic_write\n"
        "def write(stream):\n"
        "    stream.write(b'half a checkpoint'); stream.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", killed_write, str(last)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False,
    )
    assert done.returncode == -signal.SIGKILL
    leftovers = [path.name for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")
    assert load_checkpoint(last)["student"]["weight"][0, 0] == 1.0  # the old one is intact
    save_checkpoint(minimal_checkpoint(2.0), last)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.pt"]


def test_a_temporary_removed_before_its_writer_locked_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a cleanup can lose: it removes a new temporary between its creation and its
    writer's lock; the writer notices (no links left) and makes another."""
    created: list[str] = []
    real_mkstemp = files_module.tempfile.mkstemp

    def mkstemp_then_cleanup(**kwargs: object) -> tuple[int, str]:
        handle, name = real_mkstemp(**kwargs)
        created.append(name)
        if len(created) == 1:
            os.unlink(name)  # what remove_stale_temporaries does to an unlocked temporary
        return handle, name

    monkeypatch.setattr(files_module.tempfile, "mkstemp", mkstemp_then_cleanup)
    path = save_checkpoint(minimal_checkpoint(5.0), tmp_path / "last.pt")
    assert len(created) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["student"]["weight"][0, 0] == 5.0


def stored_records(path: Path) -> list[tuple[int, int]]:
    """``(offset, size)`` in the file of the data of every tensor storage of ``path``
    (the zip records ``*/data/<key>``, stored uncompressed)."""
    raw = path.read_bytes()
    records = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            assert info.compress_type == zipfile.ZIP_STORED
            # the local header: 30 bytes, then the name and the extra field (lengths at 26, 28)
            header = info.header_offset
            name_length, extra_length = struct.unpack("<HH", raw[header + 26 : header + 30])
            start = header + 30 + name_length + extra_length
            records.append((start, info.file_size))
    return records


def test_a_flipped_bit_anywhere_in_any_stored_tensor_is_refused(tmp_path: Path) -> None:
    """Every storage record (student, optimizer, generator states), flipped at its first,
    middle and last byte: each is refused."""
    clean = save_checkpoint(minimal_checkpoint(), tmp_path / "clean.pt").read_bytes()
    records = stored_records(tmp_path / "clean.pt")
    assert len(records) >= 4  # weight, bias, step, the torch generator state
    for start, size in records:
        for offset in sorted({start, start + size // 2, start + size - 1}):
            damaged = tmp_path / "damaged.pt"
            raw = bytearray(clean)
            raw[offset] ^= 0x01
            damaged.write_bytes(bytes(raw))
            with pytest.raises(CheckpointError, match=r"damaged\.pt is "):
                load_checkpoint(damaged)
