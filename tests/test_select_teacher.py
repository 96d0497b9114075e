"""``torchkd select-teacher``: a trained teacher outranks a damaged copy, on validation only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from torchkd.config import ConfigError, build_from_recipe, recipe_from_dict
from torchkd.select_teacher import CandidateResult, _rank, candidate_spec, select_teacher
from torchkd.train import fit, load_student_weights

TEACHER = {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [32]}}


def kd_recipe(**changes: Any) -> dict[str, Any]:
    recipe = {
        "name": "pick",
        "data": {"dataset": "digits", "batch_size": 64},
        "teacher": TEACHER,
        "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [8]}},
        "terms": [
            {"name": "kd", "loss": "hinton", "loss_kwargs": {"temperature": 4.0, "alpha": 0.9}}
        ],
        "train": {"epochs": 1, "optimizer": {"name": "adam", "lr": 0.01}, "device": "cpu"},
    }
    return {**recipe, **changes}


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A teacher trained on digits (torchkd checkpoint) and a noised copy (bare safetensors)."""
    root = tmp_path_factory.mktemp("teachers")
    teacher_recipe = recipe_from_dict(
        kd_recipe(
            name="teacher",
            teacher=None,
            student=TEACHER,
            terms=[{"name": "ce", "loss": "ce"}],
            train={"epochs": 6, "optimizer": {"name": "adam", "lr": 0.01}, "progress": False},
        )
    )
    built = build_from_recipe(teacher_recipe)
    result = fit(
        built.distiller,
        built.loaders.train,
        built.loaders.val,
        built.train_config,
        root / "teacher",
        resolved_config=teacher_recipe.model_dump(mode="json"),
    )
    good = result.last_checkpoint
    generator = torch.Generator().manual_seed(0)
    damaged = {
        name: weights + 3 * weights.std() * torch.randn(weights.shape, generator=generator)
        for name, weights in load_student_weights(good).items()
    }
    damaged_path = root / "damaged.safetensors"
    save_file(damaged, damaged_path)
    return good, damaged_path


def test_ranks_the_trained_teacher_above_the_damaged_one(
    candidates, built_splits: list[str]
) -> None:
    good, damaged = candidates
    built = built_splits
    recipe = recipe_from_dict(kd_recipe())
    selection = select_teacher(recipe, [damaged, good], echo=lambda line: None)
    assert [c.path for c in selection.candidates] == [str(good), str(damaged)]
    assert selection.ranked_by == "teacher validation top-1"
    best, worst = selection.candidates
    assert best.val["top1"] > 80 > worst.val["top1"] + 20
    assert best.model == "mlp(in_features=64, hidden=[32])"
    assert best.parameters == (64 * 32 + 32) + (32 * 10 + 10)
    assert (best.rank, worst.rank) == (1, 2) and "highest validation top-1" in best.reason
    assert "| 1 | `" in selection.table() and "test" not in built


def test_the_distillation_probe_decides_the_ranking(candidates) -> None:
    good, damaged = candidates
    recipe = recipe_from_dict(kd_recipe())
    selection = select_teacher(recipe, [damaged, good], probe_steps=12, echo=lambda line: None)
    assert selection.ranked_by == "distillation probe" and selection.probe_steps == 12
    assert [c.path for c in selection.candidates] == [str(good), str(damaged)]
    best, worst = selection.candidates
    assert best.probe_mean > worst.probe_mean
    assert len(selection.baseline_top1) == 1 and 0.0 < selection.baseline_mean < 100.0
    assert "probe student top-1" in selection.table()


def make_result(path: str, top1: float, probe: float) -> CandidateResult:
    return CandidateResult(path, "m", 1, {"top1": top1, "nll": 1.0, "ece": 0.1}, [probe])


def test_probe_ranking_overrides_teacher_accuracy_and_warns() -> None:
    accurate = make_result("accurate", top1=95.0, probe=70.0)
    early = make_result("early", top1=90.0, probe=80.0)
    useless = make_result("useless", top1=50.0, probe=60.0)
    results = [accurate, useless, early]
    assert _rank(results, baseline=[72.0]) == "distillation probe"
    assert [r.path for r in results] == ["early", "accurate", "useless"]
    assert "the most accurate teacher, but its student learns less" in accurate.reason
    assert early.warning == "" and "+8.00 points" in early.reason
    assert accurate.warning == useless.warning == "not better than the student trained without KD"


def test_bare_weights_need_a_teacher_architecture(candidates) -> None:
    good, damaged = candidates
    assert candidate_spec(good, recipe_from_dict(kd_recipe())).kwargs == TEACHER["kwargs"]
    no_teacher = recipe_from_dict(kd_recipe(teacher=None, terms=[{"name": "ce", "loss": "ce"}]))
    with pytest.raises(ConfigError, match="architecture is unknown"):
        candidate_spec(damaged, no_teacher)
    with pytest.raises(ConfigError, match="needs a recipe with one `teacher:`"):
        select_teacher(no_teacher, [good], echo=lambda line: None)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist"):
        select_teacher(recipe_from_dict(kd_recipe()), [good.parent / "missing.pt"])


def test_cli_select_teacher(candidates, tmp_path: Path, capsys) -> None:
    import yaml

    from torchkd.cli import main

    good, damaged = candidates
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(yaml.safe_dump(kd_recipe()))
    arguments = ["select-teacher", str(recipe), "--out", str(tmp_path)]
    assert main([*arguments, "--candidates", str(damaged), str(good)]) == 0
    printed = capsys.readouterr().out
    assert f"recommended: teacher.checkpoint={good}" in printed
    assert "| 1 | `" in (tmp_path / "teacher_selection.md").read_text()
    assert main([*arguments, "--candidates", str(tmp_path / "nope.pt")]) == 2
    assert "--candidates" in capsys.readouterr().err
