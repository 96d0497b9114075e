"""Sharded (FSDP, ``.dcp``) checkpoints whose bytes are checked: ``torchkd train --resume``
under ``torchrun`` refuses a damaged one on every rank together -- exit 2 on each, one message
naming the file, no traceback from torchkd, no rank left dying on "Connection closed by peer"
-- and changes no file; ``torchkd eval`` and ``torchkd export`` read one on a single process,
with no process group. Select with ``-m distributed``."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from torchkd.cli import main
from torchkd.train import load_student_weights

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
    trainer_file = run_dir / "checkpoints" / "last.dcp" / "trainer.rank0.pt"
    trainer = torch.load(trainer_file, weights_only=True)
    assert trainer["progress"]["epoch"] == 2


def student_by_torch(directory: Path, scratch: Path) -> dict[str, Tensor]:
    """The student weights of the sharded ``directory`` as torch's own converter reads them
    (``dcp_to_torch_save``: the whole checkpoint, model and optimizer)."""
    whole = scratch / "whole.pt"
    dcp_to_torch_save(directory, whole)
    model = torch.load(whole, weights_only=True)["model"]
    return {
        key.removeprefix("student."): v for key, v in model.items() if key.startswith("student.")
    }


@pytest.mark.distributed
def test_eval_and_export_read_a_sharded_checkpoint_on_one_process(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--checkpoint last.dcp`` (or ``last.pt``, the name the run's other files use) gives the
    metrics of the same weights saved as a .pt file, and exports exactly those weights."""
    recipe, run_dir = trained
    last = run_dir / "checkpoints" / "last.dcp"
    reference = tmp_path / "student.pt"
    weights = student_by_torch(last, tmp_path)
    torch.save(weights, reference)

    def evaluated(checkpoint: Path) -> dict[str, object]:
        code = main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--json"])
        assert code == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    expected = evaluated(reference)
    assert evaluated(last) == expected
    assert evaluated(last.with_suffix(".pt")) == expected
    out = tmp_path / "student.safetensors"
    assert main(["export", str(recipe), "--checkpoint", str(last), "--out", str(out)]) == 0
    exported = load_student_weights(out)
    assert exported.keys() == weights.keys()
    assert all(torch.equal(exported[key], weights[key]) for key in weights)


@pytest.mark.distributed
def test_eval_refuses_a_damaged_sharded_checkpoint(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe, source = trained
    last = tmp_path / "last.dcp"
    shutil.copytree(source / "checkpoints" / "last.dcp", last)
    damaged = flip_a_bit_of_a_model_tensor(last)
    assert main(["eval", str(recipe), "--checkpoint", str(last)]) == 2
    assert str(damaged) in capsys.readouterr().err
