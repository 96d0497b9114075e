"""Every refusal of input exits 2 with its message alone (no class name, no traceback), names
the file or YAML path, and leaves no run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml

from torchkd.cli import COMMANDS, main
from torchkd.cli.base import Command
from torchkd.errors import InputError
from torchkd.models import create_model
from torchkd.train import save_checkpoint
from torchkd.train.rng import capture_rng_state

LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}
TOKENIZER_SIZE = 300


class DamagedThing(InputError):
    """A refusal of input defined outside the CLI (as a data cache's error would be)."""


def test_any_input_error_exits_2_with_its_message_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(args: argparse.Namespace) -> int:
        raise DamagedThing("cache/shard_0.pt is damaged: its digest does not match")

    command = Command("refuse", "refuses", "torchkd refuse", lambda parser: None, refuse)
    monkeypatch.setitem(COMMANDS._entries, "refuse", command)
    assert main(["refuse"]) == 2
    error = capsys.readouterr().err
    assert "torchkd refuse: error: cache/shard_0.pt is damaged" in error
    assert "DamagedThing" not in error and "Traceback" not in error


def digits_recipe(tmp_path: Path, teacher_checkpoint: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    mlp = {"in_features": 64, "num_classes": 10}
    settings = {
        "name": "digits_kd",
        "data": {"dataset": "digits", "batch_size": 32},
        "teacher": {"model": "mlp", "kwargs": mlp, "checkpoint": str(teacher_checkpoint)},
        "student": {"model": "mlp", "kwargs": mlp},
        "terms": [{"name": "kd", "loss": "kd"}],
        "train": {"epochs": 1, "progress": False, "device": "cpu"},
    }
    recipe.write_text(yaml.safe_dump(settings))
    return recipe


def test_a_damaged_teacher_checkpoint_exits_2_and_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = create_model("mlp", in_features=64, num_classes=10)
    checkpoint = {
        "student": teacher.state_dict(),
        "extras": {},
        "optimizer": {},
        "rng": capture_rng_state(),
        "progress": {},
        "config": {},
    }
    path = save_checkpoint(checkpoint, tmp_path / "teacher.pt")
    weight = teacher.state_dict()["head.weight"]
    raw = bytearray(path.read_bytes())
    start = raw.find(weight.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert start >= 0
    raw[start + 4] ^= 0x01
    path.write_bytes(bytes(raw))
    run_dir = tmp_path / "run"

    assert main(["train", str(digits_recipe(tmp_path, path)), "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert f"teacher.checkpoint: {path} is damaged" in error, error
    assert "Traceback" not in error and "CheckpointError" not in error
    assert not run_dir.exists()


@pytest.fixture
def text_data(tmp_path: Path) -> dict[str, object]:
    """``data:`` of the text dataset with a BPE tokenizer of TOKENIZER_SIZE tokens."""
    from torchkd.data import train_bpe_tokenizer

    files = [tmp_path / f"code_{n}.py" for n in range(10)]  # documents for every split
    for n, file in enumerate(files):
        file.write_text("".join(f"def f{i}(x):\n    return x * {i} + {n}\n" for i in range(40)))
    tokenizer = train_bpe_tokenizer(
        [file.read_text() for file in files],
        vocab_size=TOKENIZER_SIZE,
        directory=tmp_path / "tokenizer",
    )
    assert len(tokenizer) == TOKENIZER_SIZE
    kwargs = {
        "files": [str(file) for file in files],
        "tokenizer": str(tmp_path / "tokenizer"),
        "seq_len": 16,
        "test_fraction": 0.1,
        "cache": str(tmp_path / "cache"),
    }
    return {"dataset": "text", "batch_size": 4, "val_fraction": 0.2, "kwargs": kwargs}


def lm_recipe(tmp_path: Path, data: dict[str, object], teacher: dict[str, object]) -> Path:
    student_config = {**LLAMA, "vocab_size": TOKENIZER_SIZE - 40}  # smaller than the tokenizer
    settings = {
        "name": "tiny_lm",
        "data": data,
        "teacher": teacher,
        "student": {"model": "hf_causal_lm", "kwargs": {"config": student_config}},
        "terms": [{"name": "kd", "loss": "fused_linear_kd"}],
        "train": {"epochs": 1, "progress": False, "device": "cpu"},
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(settings))
    return recipe


def test_a_tokenizer_larger_than_the_vocabulary_exits_2_naming_both_paths(
    tmp_path: Path, text_data: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    teacher = {
        "model": "hf_causal_lm",
        "kwargs": {"config": {**LLAMA, "vocab_size": 512}},
        "untrained": True,
    }
    run_dir = tmp_path / "run"
    recipe = lm_recipe(tmp_path, text_data, teacher)
    assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert "data.kwargs.tokenizer:" in error and "student.kwargs.config.vocab_size" in error
    assert f"has {TOKENIZER_SIZE} tokens" in error and "vocabulary of 260" in error
    assert "teacher" not in error.split("error:", 1)[1]  # the teacher's 512 fit
    assert "Traceback" not in error and "IndexError" not in error
    assert not run_dir.exists()


def test_a_teacher_loaded_from_kwargs_path_is_not_reported_untrained(
    tmp_path: Path, text_data: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    from torchkd.models import hf_causal_lm

    directory = tmp_path / "teacher"
    hf_causal_lm(config={**LLAMA, "vocab_size": 512}).save_pretrained(directory)
    assert json.loads((directory / "config.json").read_text())["vocab_size"] == 512
    teacher = {"model": "hf_causal_lm", "kwargs": {"path": str(directory)}}
    recipe = lm_recipe(tmp_path, text_data, teacher)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2  # vocabulary
    assert "initial weights" not in capsys.readouterr().err
