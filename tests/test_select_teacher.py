"""``torchkd select-teacher``: a trained teacher outranks a damaged copy, on validation only."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from torchkd.config import ConfigError, build_from_recipe, recipe_from_dict
from torchkd.select_teacher import (
    CandidateResult,
    TeacherSelection,
    _lead_caveat,
    _rank,
    candidate_spec,
    select_teacher,
)
from torchkd.train import export_student, fit, load_student_weights

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


def make_result(path: str, top1: float, probe: float | list[float]) -> CandidateResult:
    probes = probe if isinstance(probe, list) else [probe]
    return CandidateResult(path, "m", 1, {"top1": top1, "nll": 1.0, "ece": 0.1}, probes)


def test_candidates_with_the_same_weights_are_measured_once(
    candidates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchkd.train

    good, damaged = candidates
    same = export_student(good, tmp_path / "epoch_006.safetensors")  # other file, same weights
    evaluated = []
    evaluate = torchkd.train.evaluate
    monkeypatch.setattr(
        torchkd.train, "evaluate", lambda *a, **k: evaluated.append(1) or evaluate(*a, **k)
    )
    lines: list[str] = []
    recipe = recipe_from_dict(kd_recipe())
    selection = select_teacher(recipe, [good, damaged, same], echo=lines.append)
    assert len(evaluated) == 2 and len(selection.candidates) == 2
    best = selection.candidates[0]
    assert best.path == str(good) and best.same_weights == [str(same)]
    assert f"| 1 | `{good}` = `{same}` |" in selection.table()
    assert f"{same}: the same weights as {good} (measured once)" in lines


def test_a_single_seed_lead_within_noise_is_called_so() -> None:
    best, runner_up = make_result("a.pt", 90.0, 80.0), make_result("b.pt", 91.0, 79.5)
    results = [runner_up, best]
    _rank(results, baseline=[70.0])
    caveat = _lead_caveat(results, [70.0], val_samples=360)
    # binomial standard error of each accuracy on 360 samples, doubled for the difference
    noise = 2 * 100 * math.sqrt(0.8 * 0.2 / 360 + 0.795 * 0.205 / 360)
    assert (
        f"its +0.50-point lead over b.pt is within noise (2 standard errors: {noise:.2f} points)"
        in caveat
    )
    assert "without KD" not in caveat  # +10 points: beyond the noise
    assert "one probe seed" in caveat and "--probe-seeds 3" in caveat
    selection = TeacherSelection(results, [70.0], 12, "distillation probe", caveat)
    assert selection.recommendation().splitlines() == [
        "recommended: teacher.checkpoint=a.pt",
        f"caveat: {caveat}",
    ]


def test_a_lead_beyond_the_seed_spread_has_no_caveat() -> None:
    results = [
        make_result("a.pt", 90.0, [80.0, 80.2, 79.8]),
        make_result("b.pt", 91.0, [79.0, 79.1, 78.9]),
    ]
    _rank(results, baseline=[70.0, 70.5, 69.5])
    assert _lead_caveat(results, [70.0, 70.5, 69.5], val_samples=360) == ""
    # the same lead with seeds that spread by points is within noise
    results[1].probe_top1 = [76.0, 79.0, 82.0]
    assert "lead over b.pt is within noise" in _lead_caveat(results, [70.0], val_samples=360)


def test_no_teacher_is_recommended_when_none_beats_the_student_without_kd() -> None:
    results = [make_result("a.pt", 95.0, 70.0), make_result("b.pt", 90.0, 71.0)]
    _rank(results, baseline=[72.0])
    selection = TeacherSelection(results, [72.0], 12, "distillation probe")
    assert selection.recommended is None
    assert selection.recommendation().startswith("recommended: none: no candidate's probe")


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
