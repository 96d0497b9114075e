"""Sharded (FSDP, ``.dcp``) checkpoints whose bytes are checked: ``torchkd train --resume``
under ``torchrun`` refuses a damaged one on every rank together -- exit 2 on each, one message
naming the file, no traceback from torchkd, no rank left dying on "Connection closed by peer"
-- and changes no file. Select with ``-m distributed``."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from . import distributed_cases as cases

ROOT = Path(__file__).resolve().parents[2]
RECIPE = """\
name: tiny_fsdp
data: {dataset: digits, batch_size: 32}
teacher: {model: mlp, kwargs: {in_features: 64, num_classes: 10, hidden: [16]}, untrained: true}
student: {model: mlp, kwargs: {in_features: 64, num_classes: 10, hidden: [8]}}
terms:
  - {name: kd, loss: kd}
train: {epochs: 1, progress: false, distributed: fsdp, device: cpu}
"""


def torchkd_train(recipe: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 -m torchkd train RECIPE --run-dir RUN_DIR ARGS``."""
    return cases.torchrun("-m", "torchkd", "train", str(recipe), "--run-dir", str(run_dir), *args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A recipe and its one-epoch FSDP run on 2 processes (checkpoints/last.dcp)."""
    root = tmp_path_factory.mktemp("fsdp")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    result = torchkd_train(recipe, root / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe, root / "run"


def flip_a_bit_of_a_model_tensor(last: Path) -> Path:
    """Flip one bit in the middle of the stored data of the first model shard in
    ``__0_0.distcp`` (found through DCP's ``.metadata``); return that file."""
    metadata = dcp.FileSystemReader(str(last)).read_metadata()
    item = next(
        info
        for index, info in metadata.storage_data.items()
        if index.fqn.startswith("model.") and info.relative_path == "__0_0.distcp"
    )
    path = last / item.relative_path
    raw = bytearray(path.read_bytes())
    blob = bytes(raw[item.offset : item.offset + item.length])
    tensor = torch.load(io.BytesIO(blob), weights_only=True)
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    assert len(data) >= 8 and blob.count(data) == 1
    raw[item.offset + blob.find(data) + len(data) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return path


def damage_rank_1_trainer_file(last: Path) -> Path:
    """Zero 8 bytes in the middle of ``trainer.rank1.pt``, which rank 1 alone reads."""
    path = last / "trainer.rank1.pt"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(8)
    path.write_bytes(bytes(raw))
    return path


def remove_a_shard_file(last: Path) -> Path:
    path = last / "__1_0.distcp"
    path.unlink()
    return path


@pytest.mark.distributed
@pytest.mark.parametrize(
    "damage", [flip_a_bit_of_a_model_tensor, damage_rank_1_trainer_file, remove_a_shard_file]
)
def test_resume_from_a_damaged_sharded_checkpoint_is_refused_by_every_rank(
    trained: tuple[Path, Path], tmp_path: Path, damage: Callable[[Path], Path]
) -> None:
    recipe, source = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    checkpoints = run_dir / "checkpoints"
    damaged = damage(checkpoints / "last.dcp")
    before = {path: path.read_bytes() for path in checkpoints.rglob("*") if path.is_file()}

    result = torchkd_train(recipe, run_dir, "train.epochs=2", "--resume")

    errors = [line for line in result.stderr.splitlines() if "torchkd train: error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert str(damaged) in errors[0], errors[0]
    # both ranks exit 2; torchrun may SIGTERM the second one (-15) before it has exited
    codes = re.findall(r"exitcode  : (-?\d+)", result.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, result.stderr[-3000:]
    assert "Connection closed by peer" not in result.stderr
    assert str(ROOT / "torchkd") not in result.stderr  # no traceback through torchkd
    after = {path: path.read_bytes() for path in checkpoints.rglob("*") if path.is_file()}
    assert after == before


@pytest.mark.distributed
def test_an_undamaged_sharded_checkpoint_resumes(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    recipe, source = trained
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    result = torchkd_train(recipe, run_dir, "train.epochs=2", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    trainer = torch.load(
        run_dir / "checkpoints" / "last.dcp" / "trainer.rank0.pt", weights_only=True
    )
    assert trainer["progress"]["epoch"] == 2
