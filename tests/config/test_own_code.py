"""Your own code in recipes (``package.module:attr`` models and datasets, found beside the recipe
or in the working directory) and the recipe mistakes that must stop a run before it starts."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from torchkd.cli import main
from torchkd.config import build_distiller, build_loaders, load_recipe, recipe_from_dict

MODELS = """
from torch import nn


class TinyNet(nn.Module):
    origin = "{origin}"

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def forward(self, inputs):
        return self.head(self.body(inputs))
"""
DATA = """
from torchkd.data import create_dataset


def small_digits(split, val_fraction=0.1, split_seed=0):
    return create_dataset("digits", split, val_fraction=val_fraction, split_seed=split_seed)


def no_split_arguments(split):
    return create_dataset("digits", split)
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Writes a package (a fresh name per test, as modules stay imported) under a directory;
    ``sys.path``, ``sys.modules`` and the working directory are restored afterwards."""
    name = f"ownpkg_{request.node.name.split('[')[0][5:]}"
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)

    def write(directory: Path, origin: str = "") -> str:
        root = directory / name
        root.mkdir(parents=True)
        (root / "__init__.py").write_text("")
        (root / "models.py").write_text(MODELS.format(origin=origin))
        (root / "data.py").write_text(DATA)
        return name

    yield write
    for module in [module for module in sys.modules if module.split(".")[0] == name]:
        del sys.modules[module]


def write_recipe(directory: Path, pkg: str, **sections: str) -> Path:
    text = {
        "name": "own",
        "data": f'{{dataset: "{pkg}.data:small_digits", batch_size: 64}}',
        "student": f'{{model: "{pkg}.models:TinyNet"}}',
        "terms": "[{name: ce, loss: ce}]",
        "train": "{epochs: 1, progress: false, device: cpu}",
        **sections,
    }
    path = directory / "recipe.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}: {value}\n" for key, value in text.items()))
    return path


def test_a_typo_in_the_module_names_the_yaml_path_and_the_module_that_exists(
    tmp_path: Path, package, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = package(tmp_path)
    recipe = write_recipe(tmp_path, pkg, student=f'{{model: "{pkg}.model:TinyNet"}}')
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"student.model: no module '{pkg}.model' (did you mean '{pkg}.models'?)" in error
    assert "Traceback" not in error


def test_a_typo_in_the_class_names_the_yaml_path_and_the_class_that_exists(
    tmp_path: Path, package, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = package(tmp_path)
    recipe = write_recipe(tmp_path, pkg, student=f'{{model: "{pkg}.models:TinyNte"}}')
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    expected = f"student.model: module '{pkg}.models' has no attribute 'TinyNte'"
    assert f"{expected} (did you mean 'TinyNet'?)" in error


def test_references_import_from_the_recipe_directory_before_the_working_directory(
    tmp_path: Path, package
) -> None:
    pkg = package(tmp_path / "recipes", origin="beside the recipe")
    package(tmp_path, origin="working directory")  # the same package name in the cwd
    recipe = load_recipe(write_recipe(tmp_path / "recipes", pkg))
    assert type(build_distiller(recipe).student).origin == "beside the recipe"


def test_references_import_from_the_working_directory_when_not_beside_the_recipe(
    tmp_path: Path, package
) -> None:
    pkg = package(tmp_path, origin="working directory")
    recipe = load_recipe(write_recipe(tmp_path / "elsewhere", pkg))
    assert type(build_distiller(recipe).student).origin == "working directory"
    loaders = build_loaders(recipe.data, splits=["val"])
    assert len(loaders.val.dataset) == 144  # the digits' validation split, via small_digits


def test_a_dataset_function_without_the_split_arguments_is_refused_naming_them(
    tmp_path: Path, package, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = package(tmp_path)
    data = f'{{dataset: "{pkg}.data:no_split_arguments"}}'
    recipe = write_recipe(tmp_path, pkg, data=data)
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert f"data.dataset: {pkg}.data:no_split_arguments(split) does not take" in error
    assert "val_fraction, split_seed, which torchkd passes it" in error


def test_a_dataset_typo_names_the_yaml_path(
    tmp_path: Path, package, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = package(tmp_path)
    recipe = write_recipe(tmp_path, pkg, data=f'{{dataset: "{pkg}.data:small_digit"}}')
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    assert "(did you mean 'small_digits'?)" in capsys.readouterr().err


# ------------------------------------------------------------------ mistakes that stop a run

RAW = {
    "name": "x",
    "data": {"dataset": "digits", "batch_size": 64},
    "teacher": {"model": "mlp", "kwargs": {"in_features": 64}},
    "student": {"model": "mlp", "kwargs": {"in_features": 64}},
    "terms": [{"name": "kd", "loss": "kd"}],
}


def test_a_teacher_without_weights_is_refused_unless_pretrained_or_untrained_is_said() -> None:
    with pytest.raises(ValueError, match=r"teacher\.checkpoint: required: .*untrained=true"):
        build_distiller(recipe_from_dict(RAW))
    for flag in ("teacher.untrained=true", "teacher.pretrained=true"):
        assert build_distiller(recipe_from_dict(RAW, [flag])).teachers


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["teacher.untrained=true", "teacher.checkpoint=t.pt"],
            "teacher.untrained: contradicts checkpoint",
        ),
        (["student.untrained=true"], "student.untrained: applies to teachers only"),
    ],
)
def test_contradicting_weight_sources_are_refused(overrides: list[str], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        recipe_from_dict(RAW, overrides)


def test_a_misplaced_key_points_to_the_nested_key_of_that_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            """
            name: x
            data: {dataset: digits}
            student: {model: mlp}
            terms: [{name: ce, loss: ce}]
            """
        )
    )
    assert main(["train", str(recipe), "train.lr=0.01"]) == 2
    error = capsys.readouterr().err
    assert "train.lr is not a recipe key (did you mean 'train.optimizer.lr'?)" in error
    recipe.write_text(recipe.read_text() + "train: {lr: 0.01}\n")
    assert main(["train", str(recipe)]) == 2
    assert "train.lr: unknown key (did you mean 'train.optimizer.lr'?)" in capsys.readouterr().err
