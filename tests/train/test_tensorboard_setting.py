"""``train.tensorboard``: TensorBoard files when the package is installed (``null``), always
(``true``: a missing package is an ``ImportError`` naming the ``log`` extra) or never
(``false``); ``metrics.jsonl`` is written either way."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchkd.config import TrainConfig
from torchkd.config.loading import load_recipe
from torchkd.train.logging import read_jsonl

from .test_loop import make_config, make_distiller, run


def _missing_tensorboard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as if absent


def test_default_writes_tensorboard_files_when_installed(tmp_path: Path) -> None:
    assert TrainConfig().tensorboard is None
    run(make_distiller(), tmp_path / "run", make_config(epochs=1))
    assert any((tmp_path / "run" / "tb").iterdir())


def test_false_writes_none(tmp_path: Path) -> None:
    result = run(make_distiller(), tmp_path / "run", make_config(epochs=1, tensorboard=False))
    assert not (tmp_path / "run" / "tb").exists()
    assert [r["kind"] for r in read_jsonl(result.metrics_path)][-1] == "epoch"


def test_default_without_tensorboard_logs_jsonl_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing_tensorboard(monkeypatch)
    result = run(make_distiller(), tmp_path / "run", make_config(epochs=1))
    assert not (tmp_path / "run" / "tb").exists()
    assert read_jsonl(result.metrics_path)


def test_true_without_tensorboard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _missing_tensorboard(monkeypatch)
    with pytest.raises(ImportError, match=r"needs tensorboard: pip install 'torchkd\[log\]'"):
        run(make_distiller(), tmp_path / "run", make_config(epochs=1, tensorboard=True))


def test_a_recipe_sets_it(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: r\n"
        "student: {model: mlp, kwargs: {in_features: 4, num_classes: 2}}\n"
        "data: {dataset: digits}\n"
        "terms: [{name: ce, loss: ce}]\n"
        "train: {tensorboard: false}\n"
    )
    assert load_recipe(recipe).train.tensorboard is False
