"""One path from recipe to run: ``torchkd train``, a tuning trial and a teacher-selection probe
train on exactly the same batches for the same recipe and seed (augmentation included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from torchkd.cli import main
from torchkd.config import build_loaders, recipe_from_dict
from torchkd.distiller import Distiller
from torchkd.select_teacher import select_teacher
from torchkd.tune import run_search

EPOCHS = 2


def augmented_recipe(teacher_checkpoint: str | None = None) -> dict[str, Any]:
    """Hinton KD of a tiny MLP on digits with random shifts: the augmentation draws from the
    loader's generator, so any loader built another way trains on other inputs."""
    teacher: dict[str, Any] = {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [16]}}
    if teacher_checkpoint is not None:
        teacher["checkpoint"] = teacher_checkpoint
    else:
        teacher["untrained"] = True
    return {
        "name": "same_batches",
        "data": {"dataset": "digits", "batch_size": 256, "augment": {"shift": 2}},
        "teacher": teacher,
        "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [8]}},
        "terms": [{"name": "kd", "loss": "hinton", "loss_kwargs": {"temperature": 4.0}}],
        "train": {"epochs": EPOCHS, "seed": 3, "device": "cpu", "progress": False},
        "tune": {
            "space": {"terms.0.loss_kwargs.alpha": {"type": "categorical", "choices": [0.5]}},
            "pruner": "none",
        },
    }


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every training batch (sample indices, inputs) the Distiller sees, one list per run."""
    runs: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    forward = Distiller.forward

    def recording(self: Distiller, batch: dict[str, Any]) -> Any:
        if self.training and self._built:
            runs[-1].append((batch["index"].clone(), batch["inputs"].clone()))
        return forward(self, batch)

    monkeypatch.setattr(Distiller, "forward", recording)
    return runs


def same_batches(first: list[Any], second: list[Any]) -> bool:
    return len(first) == len(second) and all(
        torch.equal(a_index, b_index) and torch.equal(a_inputs, b_inputs)
        for (a_index, a_inputs), (b_index, b_inputs) in zip(first, second, strict=True)
    )


def test_train_trial_and_probe_see_the_same_batches(tmp_path: Path, recorded: list) -> None:
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(augmented_recipe()))

    recorded.append([])
    assert main(["train", str(recipe_path), "--run-dir", str(tmp_path / "train")]) == 0
    trained = recorded[-1]
    steps = len(trained)
    train_loader = build_loaders(recipe_from_dict(augmented_recipe()).data, splits=["train"]).train
    assert steps == EPOCHS * len(train_loader)

    recorded.append([])
    run_search(
        augmented_recipe(), trials=1, out=tmp_path / "tune", retrain=False, echo=lambda _: None
    )
    assert same_batches(recorded[-1], trained)

    teacher = tmp_path / "train" / "checkpoints" / "last.pt"
    recipe = recipe_from_dict(augmented_recipe(str(teacher)))
    recorded.append([])  # the baseline probe (no teacher), then the candidate's probe
    select_teacher(recipe, [teacher], probe_steps=steps, echo=lambda _: None)
    probes = recorded[-1]
    assert same_batches(probes[:steps], trained) and same_batches(probes[steps:], trained)
