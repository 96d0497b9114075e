"""Recipes are checked before anything runs: a bad loss argument, tap path, model argument,
dataset name, class count or term weight exits 2 naming the exact YAML path, and leaves no run
directory behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from torchkd.cli import main

RECIPE = {
    "name": "checked",
    "data": {"dataset": "mnist1d", "batch_size": 64},
    "teacher": {"model": "cnn1d", "kwargs": {"width": 8}, "untrained": True},
    "student": {"model": "cnn1d", "kwargs": {"width": 4}},
    "terms": [
        {"name": "kd", "loss": "hinton", "loss_kwargs": {"temperature": 4.0, "alpha": 0.9}},
        {"name": "ce", "loss": "ce", "weight": 0.1},
        {"name": "hint", "loss": "hint", "student": "conv2", "teacher": "conv2"},
    ],
    "train": {"epochs": 1, "progress": False, "device": "cpu"},
}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("terms.0.loss_kwargs.temperature=0", "terms.0.loss_kwargs.temperature: "),
        ("terms.0.loss_kwargs.temperature=-2", "terms.0.loss_kwargs.temperature: "),
        ("terms.0.loss_kwargs.temperature=hot", "terms.0.loss_kwargs.temperature: "),
        ("terms.0.loss_kwargs.alpha=1.5", "terms.0.loss_kwargs.alpha: "),
        ("terms.0.loss_kwargs.temprature=2", "terms.0.loss_kwargs.temprature: unknown argument"),
        ("student.kwargs.num_classes=5", "terms.0: term 'kd': the student's logits have 5"),
        ("terms.1.weight=-1", "terms.1.weight: "),
        ("terms.2.student=conv9", "terms.2.student: term 'hint': no module at path 'conv9'"),
        ("terms.2.teacher=conv9", "terms.2.teacher: term 'hint': no module at path 'conv9'"),
        ("student.kwargs.widht=3", "student.kwargs.widht: unknown argument of CNN1D; did you mean"),
        ("data.dataset=mnist1dd", "data.dataset: unknown dataset 'mnist1dd'; did you mean"),
    ],
)
def test_bad_recipes_exit_2_with_the_yaml_path_and_no_run_dir(
    override: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), override, "--run-dir", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert expected in error, error
    assert not run_dir.exists()


def test_the_good_recipe_passes_the_checks(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert (
        main(["train", str(recipe), "data.batch_size=1024", "--run-dir", str(tmp_path / "r")]) == 0
    )


def test_a_missing_teacher_says_which_recipe_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh clone: no runs/ yet
    kd = Path(__file__).resolve().parents[2] / "torchkd" / "configs" / "mnist1d" / "kd.yaml"
    assert main(["train", str(kd)]) == 2
    error = capsys.readouterr().err
    assert "teacher.checkpoint: runs/mnist1d_teacher/checkpoints/best.pt does not exist" in error
    assert "torchkd train configs/mnist1d/teacher.yaml" in error
    assert not (tmp_path / "runs").exists()
