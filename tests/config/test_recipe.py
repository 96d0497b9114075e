"""Recipe schema: validation messages with YAML paths, overrides, resolved config, building."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import torchkd.data
from torchkd.config import (
    ConfigError,
    Recipe,
    apply_overrides,
    build_from_recipe,
    build_loaders,
    load_recipe,
    recipe_from_dict,
    write_resolved_config,
)
from torchkd.data import TensorDictDataset
from torchkd.models import create_model
from torchkd.schedules import Schedule

EXAMPLE = """
name: kd_cnn6_from_cnn64
data:
  dataset: mnist1d
  batch_size: 128
  val_fraction: 0.1
  seed: 0
  transfer: {num_samples: 25000, labeled: false}
teacher:
  model: cnn1d
  kwargs: {width: 64}
  checkpoint: runs/teacher_cnn64/checkpoints/best.pt
student:
  model: cnn1d
  kwargs: {width: 6}
terms:
  - name: kd
    loss: kd
    loss_kwargs: {temperature: 4.0}
    weight: {name: exponential, start: 0.9, rate: 2.0, end: 0.1}
  - name: hint
    loss: hint
    student: conv2
    teacher: conv2
    adapter: conv1x1
    weight: auto
train:
  epochs: 20
  optimizer: {name: sgd, lr: 0.05, weight_decay: 5.0e-4, momentum: 0.9}
  lr_schedule: {name: cosine, warmup_epochs: 1}
  grad_clip_norm: 5.0
  amp: bf16
  seed: 1
"""


def example() -> dict:
    return yaml.safe_load(EXAMPLE)


def problems(data: dict, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        recipe_from_dict(data, overrides or [])
    return caught.value.problems


def test_example_recipe_validates_with_defaults() -> None:
    recipe = recipe_from_dict(example())
    assert recipe.train.optimizer.name == "sgd" and recipe.train.optimizer.lr == 0.05
    assert recipe.terms[0].weight == {"name": "exponential", "start": 0.9, "rate": 2.0, "end": 0.1}
    assert recipe.terms[1].weight == "auto"
    assert recipe.data.transfer.labeled is False
    assert recipe.train.max_consecutive_nonfinite == 5  # a default filled in
    assert [t.model for t in recipe.teacher_configs] == ["cnn1d"]


def test_wrong_type_names_path_and_value() -> None:
    data = example()
    data["train"]["optimizer"]["lr"] = "abc"
    assert problems(data) == ["train.optimizer.lr: expected a number, got 'abc'"]


def test_unknown_key_suggests_the_closest() -> None:
    data = example()
    data["train"]["optimizr"] = data["train"].pop("optimizer")
    assert problems(data) == ["train.optimizr: unknown key (did you mean 'optimizer'?)"]
    data = example()
    data["terms"][1]["adaptor"] = data["terms"][1].pop("adapter")
    assert problems(data) == ["terms.1.adaptor: unknown key (did you mean 'adapter'?)"]


def test_nested_list_paths_and_several_problems_at_once() -> None:
    data = example()
    data["terms"][1]["weight"] = "heavy"
    data["terms"][0]["adapter"] = "conv"
    data["teachers"] = [{"kwargs": {}}]
    del data["teacher"]
    data["train"]["amp"] = "fp8"
    assert problems(data) == [
        "teachers.0.model: required key missing",
        "terms.0.adapter: expected one of 'auto', 'conv1x1', 'linear', 'pool' or 'none', "
        "got 'conv' (did you mean 'conv1x1'?)",
        "terms.1.weight: expected a number >= 0, 'auto' or a schedule mapping like "
        "{name: exponential, ...}, got 'heavy'",
        "train.amp: expected one of 'none', 'bf16' or 'fp16', got 'fp8'",
    ]


def test_section_rules() -> None:
    data = example()
    data["teachers"] = [data["teacher"]]
    assert problems(data) == ["teacher, teachers: give one teacher or a list of teachers, not both"]
    data = example()
    data["train"]["lr_schedule"] = {"name": "step"}
    assert problems(data) == [
        "train.lr_schedule.milestones: required (a list of epochs) when name is 'step'"
    ]
    data = example()
    data["terms"][1]["name"] = "kd"
    assert problems(data) == ["terms: term names must be unique, repeated: ['kd']"]
    data = example()
    data["train"]["epochs"] = True
    data["terms"][0]["weight"] = {"start": 1.0}
    assert problems(data) == [
        "terms.0.weight: a schedule mapping needs a string 'name' (e.g. {name: exponential, "
        "start: 0.9}), got keys ['start']",
        "train.epochs: expected an integer, got True",
    ]


def test_overrides_parse_yaml_values_and_follow_the_schema() -> None:
    recipe = recipe_from_dict(
        example(),
        [
            "train.epochs=5",
            "terms.0.loss_kwargs.temperature=2",
            "train.grad_clip_norm=null",
            "train.lr_schedule={name: step, milestones: [3, 4]}",
            "student.kwargs.width=8",
            "train.progress=false",
            "terms.1.weight=0.25",
        ],
    )
    assert recipe.train.epochs == 5
    assert recipe.terms[0].loss_kwargs == {"temperature": 2}
    assert recipe.train.grad_clip_norm is None
    assert recipe.train.lr_schedule.milestones == [3, 4]
    assert recipe.student.kwargs == {"width": 8}
    assert recipe.train.progress is False
    assert recipe.terms[1].weight == 0.25
    schedule = recipe_from_dict(example(), ["terms.0.weight.start=0.5"]).terms[0].weight
    assert schedule == {"name": "exponential", "start": 0.5, "rate": 2.0, "end": 0.1}
    assert apply_overrides({"name": "x"}, ["train.optimizer.lr=0.1"]) == {
        "name": "x",
        "train": {"optimizer": {"lr": 0.1}},
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", "train.epochz is not a recipe key (did you mean 'epochs'?)"),
        ("terms.7.weight=1", "terms.7: no such list entry (the list has 2 entries"),
        ("terms.1.weight.start=1", "terms.1.weight is 'auto', not a mapping"),
        ("train.epochs", "expected key=value"),
        ("nam=x", "nam is not a recipe key (did you mean 'name'?)"),
    ],
)
def test_bad_overrides_name_the_path(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match="override") as caught:
        recipe_from_dict(example(), [override])
    assert message in str(caught.value)


def test_override_type_errors_are_reported_at_validation() -> None:
    assert problems(example(), ["train.optimizer.lr=abc"]) == [
        "train.optimizer.lr: expected a number, got 'abc'"
    ]


def test_load_recipe_names_the_file_and_writes_resolved(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(EXAMPLE.replace("lr: 0.05", "lr: fast"))
    with pytest.raises(ConfigError, match=r"invalid recipe .*recipe\.yaml:\n  train\.optimizer"):
        load_recipe(path)
    path.write_text(EXAMPLE)
    recipe = load_recipe(path, ["train.epochs=3"])
    written = write_resolved_config(recipe, tmp_path / "run")
    reloaded = load_recipe(written)
    assert reloaded == recipe
    assert yaml.safe_load(written.read_text())["train"]["epochs"] == 3
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(path)


def digits_recipe(tmp_path: Path, **changes: object) -> Recipe:
    teacher = create_model("digits_cnn", width=4)
    weights = tmp_path / "teacher.safetensors"
    save_file(teacher.state_dict(), weights)
    data = {
        "name": "digits_kd",
        "data": {"dataset": "digits", "batch_size": 32},
        "teacher": {"model": "digits_cnn", "kwargs": {"width": 4}, "checkpoint": str(weights)},
        "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [16]}},
        "terms": [
            {"name": "ce", "loss": "ce", "weight": 0.5},
            {"name": "dist", "loss": "dist", "weight": {"name": "linear", "start": 1, "end": 0}},
        ],
        "train": {"seed": 7},
        **changes,
    }
    return recipe_from_dict(data)


def test_build_from_recipe(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path)
    distiller, loaders, train_config = build_from_recipe(recipe)
    assert train_config is recipe.train
    assert isinstance(distiller.terms[1].weight, Schedule)
    assert distiller.terms[0].weight == 0.5
    teacher_state = distiller.teachers[0].state_dict()
    expected = load_file(tmp_path / "teacher.safetensors")
    assert all(torch.equal(teacher_state[k], expected[k]) for k in expected)
    batch = next(iter(loaders.train))
    assert batch["inputs"].shape[0] == 32 and "labels" in batch
    again = build_from_recipe(recipe).distiller  # seeded: same initial student
    first_weight = next(distiller.student.parameters())
    assert torch.equal(next(again.student.parameters()), first_weight)


def test_build_errors_name_the_recipe_path(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path)
    broken = recipe.model_copy(deep=True)
    broken.terms[1].loss = "dsit"
    with pytest.raises(ConfigError, match=r"terms\.1\.loss: unknown loss 'dsit'; did you mean"):
        build_from_recipe(broken)
    broken = recipe.model_copy(deep=True)
    broken.student.kwargs = {"widht": 3}
    with pytest.raises(ConfigError, match=r"student\.kwargs\.widht: unknown argument of MLP"):
        build_from_recipe(broken)
    broken = recipe.model_copy(deep=True)
    broken.teacher.kwargs = {"width": 5}
    with pytest.raises(
        ConfigError,
        match=r"(?s)teacher\.checkpoint: the weights in .*teacher\.safetensors do not fit "
        r"model 'digits_cnn' with kwargs \{'width': 5\}: .*size mismatch",
    ):
        build_from_recipe(broken)
    broken = recipe.model_copy(deep=True)
    broken.terms[1].weight = {"name": "exponential", "strat": 1.0}
    with pytest.raises(ConfigError, match=r"terms\.1\.weight: .*strat"):
        build_from_recipe(broken)


def test_transfer_set_replaces_training_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated = TensorDictDataset(torch.randn(20, 1, 8, 8), torch.zeros(20, dtype=torch.long))
    requested: list[dict[str, object]] = []

    def fake_create_dataset(name: str, split: str, **kwargs: object) -> TensorDictDataset:
        requested.append({"name": name, "split": split, **kwargs})
        return generated

    monkeypatch.setattr(torchkd.data, "create_dataset", fake_create_dataset)
    transfer = {"dataset": "mnist1d_transfer", "num_samples": 20, "seed": 5}
    recipe = digits_recipe(
        tmp_path, data={"dataset": "digits", "batch_size": 8, "transfer": transfer}
    )
    loaders = build_loaders(recipe.data, seed=0)
    assert {"name": "mnist1d_transfer", "split": "train", "num_samples": 20, "seed": 5} in requested
    assert [call["split"] for call in requested if call["name"] == "digits"] == ["val", "test"]
    assert len(loaders.train.dataset) == 20
    assert "labels" not in next(iter(loaders.train))  # labeled: false drops them
    assert "labels" in next(iter(loaders.val))  # validation stays labeled (digits)
    labeled = recipe.data.model_copy(
        update={"transfer": recipe.data.transfer.model_copy(update={"labeled": True})}
    )
    assert "labels" in next(iter(build_loaders(labeled, seed=0).train))
