"""``torchkd export --format hf``: a Hugging Face student (or teacher) written with
``save_pretrained`` loads with ``AutoModelForCausalLM.from_pretrained`` and computes what the
trained model computed; ``export`` takes recipe overrides like the other commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from torchkd.cli import main
from torchkd.config import ModelConfig, build_model

from .test_lm_recipe import LLAMA

transformers = pytest.importorskip("transformers")


def lm(**changes: Any) -> dict[str, Any]:
    return {"model": "hf_causal_lm", "kwargs": {"config": {**LLAMA, **changes}}}


def write_recipe(path: Path, student: dict[str, Any], teacher: dict[str, Any]) -> str:
    recipe = {
        "name": "export_hf",
        "data": {"dataset": "digits"},
        "teacher": teacher,
        "student": student,
        "terms": [{"name": "kd", "loss": "kd"}],
    }
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def saved_weights(spec: dict[str, Any], path: Path) -> tuple[torch.nn.Module, str]:
    """A model of ``spec`` with its (random) weights saved as a state dict at ``path``."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate(spec), "student").eval()
    torch.save(model.state_dict(), path)
    return model, str(path)


def logits(model: torch.nn.Module) -> torch.Tensor:
    input_ids = torch.arange(12).reshape(2, 6) % LLAMA["vocab_size"]
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_hf_export_loads_with_from_pretrained(
    role: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    student, teacher = lm(num_hidden_layers=1), lm(hidden_size=24)
    recipe = write_recipe(tmp_path / "r.yaml", student, teacher)
    trained, checkpoint = saved_weights(
        student if role == "student" else teacher, tmp_path / "w.pt"
    )
    out = tmp_path / f"{role}_hf"
    argv = ["export", recipe, "--checkpoint", checkpoint, "--format", "hf", "--out", str(out)]
    assert main([*argv, "--model", role]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits(loaded), logits(trained), rtol=0, atol=0)


def test_export_applies_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", lm(), lm())
    _, checkpoint = saved_weights(lm(num_hidden_layers=1), tmp_path / "w.pt")
    argv = ["export", recipe, "--checkpoint", checkpoint, "--format", "hf", "--out"]
    assert main([*argv, str(tmp_path / "a")]) == 2  # the recipe's 2-layer student
    assert "does not fit the recipe's student" in capsys.readouterr().err
    override = "student.kwargs.config.num_hidden_layers=1"
    assert main([*argv, str(tmp_path / "b"), override]) == 0
    assert (tmp_path / "b" / "config.json").is_file()


def test_hf_export_of_a_model_that_is_not_hf_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mlp = {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [8]}}
    recipe = write_recipe(tmp_path / "r.yaml", mlp, mlp)
    _, checkpoint = saved_weights(mlp, tmp_path / "w.pt")
    argv = ["export", recipe, "--checkpoint", checkpoint, "--format", "hf"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "--format hf: the recipe's student: MLP is not a Hugging Face model" in error
    assert "Traceback" not in error and not (tmp_path / "out").exists()
