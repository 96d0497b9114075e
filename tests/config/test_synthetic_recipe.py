"""``data.synthetic:`` recipes: schema and refusals with their paths, the unlabeled synthetic
training set the engine trains on (and ``torchkd eval`` skips), and its cache (keyed by teacher
weights and settings)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import torchkd.data
from torchkd.cli import main
from torchkd.config import ConfigError, build_from_recipe, build_loaders, recipe_from_dict
from torchkd.train import fit

RAW: dict[str, Any] = {
    "name": "data_free",
    "data": {
        "dataset": "mnist1d",
        "batch_size": 8,
        "synthetic": {"method": "deepinversion", "samples": 16, "steps": 2, "batch_size": 8},
    },
    "teacher": {"model": "cnn1d_bn", "kwargs": {"width": 4}, "untrained": True},
    "student": {"model": "cnn1d", "kwargs": {"width": 4}},
    "terms": [{"name": "kd", "loss": "kd"}],
    "train": {"epochs": 1, "progress": False, "device": "cpu", "amp": "none"},
}


def _recipe(overrides: list[str] = (), **changes: Any) -> Any:
    raw = copy.deepcopy(RAW)
    raw.update(changes)
    return recipe_from_dict(raw, list(overrides))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The synthetic sets' cache directory (MNIST-1D itself stays in the shared cache)."""
    monkeypatch.setattr(torchkd.data, "cache_dir", lambda override=None: tmp_path / "cache")
    return tmp_path / "cache"


def test_schema_refuses_unknown_keys_and_a_second_training_set() -> None:
    data = copy.deepcopy(RAW["data"])
    data["synthetic"]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"data\.synthetic\.stepz: unknown key .*'steps'"):
        _recipe(data=data)
    with pytest.raises(ConfigError, match=r"data\.synthetic\.method: .*deepinversion"):
        _recipe(["data.synthetic.method=dafl"])
    with pytest.raises(ConfigError, match=r"data\.synthetic: replaces the training split"):
        _recipe(["data.transfer={num_samples: 10}"])


def test_build_refuses_label_terms_and_a_missing_teacher() -> None:
    terms = [{"name": "kd", "loss": "kd"}, {"name": "ce", "loss": "ce"}]
    with pytest.raises(ConfigError, match=r"terms\.1\.loss: ce reads labels"):
        build_from_recipe(_recipe(terms=terms))
    byot = [{"name": "byot", "loss": "byot", "student": ["exit1", "exit2"]}]
    with pytest.raises(ConfigError, match=r"terms\.0\.loss: byot reads labels"):
        build_from_recipe(_recipe(terms=byot))
    with pytest.raises(ConfigError, match=r"data\.synthetic: inputs are synthesized from the"):
        build_from_recipe(_recipe(teacher=None, terms=[{"name": "ce", "loss": "ce"}]))


def test_a_teacher_without_batchnorm_is_refused_with_the_path() -> None:
    with pytest.raises(ConfigError, match=r"data\.synthetic: teacher: CNN1D has no BatchNorm"):
        build_from_recipe(_recipe(["teacher.model=cnn1d"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a missing CUDA device")
def test_a_missing_synthesis_device_is_refused_with_the_path() -> None:
    with pytest.raises(ConfigError, match=r"data\.synthetic\.device: 'cuda', but CUDA is not"):
        build_from_recipe(_recipe(["data.synthetic.device=cuda"]))


def test_loaders_need_the_distiller() -> None:
    with pytest.raises(ConfigError, match="synthesized from the run's teacher"):
        build_loaders(_recipe().data, splits=["train"])


def test_synthetic_set_trains_the_student_and_is_cached(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    distiller, loaders, config = build_from_recipe(_recipe())
    train = loaders.train.dataset
    assert len(train) == 16 and sorted(train[0]) == ["index", "inputs"]  # unlabeled
    assert tuple(train[0]["inputs"].shape) == (1, 40)  # the shape of data.dataset's samples
    assert len(loaders.val.dataset) == 400 and "labels" in loaders.val.dataset[0]  # real
    (cached,) = (cache / "synthetic").glob("deepinversion-*.safetensors")
    result = fit(distiller, loaders.train, loaders.val, config, tmp_path / "run")
    assert result.nonfinite_steps == 0 and result.history[0]["step"] == 2
    recipe_file = tmp_path / "data_free.yaml"
    recipe_file.write_text(yaml.safe_dump(RAW))
    checkpoint = str(result.last_checkpoint)
    assert main(["eval", str(recipe_file), "--checkpoint", checkpoint, "--split", "val"]) == 0

    def no_synthesis(*args: object, **kwargs: object) -> None:
        raise AssertionError("synthesized again instead of reading the cache")

    monkeypatch.setattr(torchkd.data, "deep_inversion", no_synthesis)
    same_teacher = ["terms.0.loss_kwargs={temperature: 2.0}"]  # another run, the same teacher
    again = build_from_recipe(_recipe(same_teacher)).loaders.train.dataset
    assert torch.equal(again.inputs, train.inputs)
    with pytest.raises(AssertionError, match="synthesized again"):  # other teacher weights
        build_from_recipe(_recipe(["teacher.kwargs.width=5"]))
    with pytest.raises(AssertionError, match="synthesized again"):  # other settings
        build_from_recipe(_recipe(["data.synthetic.steps=3"]))
    with pytest.raises(AssertionError, match="synthesized again"):  # no cache: every run
        build_from_recipe(_recipe(["data.synthetic.cache=false"]))
    assert list((cache / "synthetic").glob("*.safetensors")) == [cached]
