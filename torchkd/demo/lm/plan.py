"""What a ``torchkd demo lm`` run will do before it does it: the two corpora, the tokenizer,
and every recipe's overrides (corpus, tokenizer, cached teacher, top-k cache; with ``quick``
a tiny corpus, tiny models and a few steps)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchkd.demo.lm.arms import LM_ARMS, lm_arm
from torchkd.demo.lm.corpus import CorpusSettings, corpus_files, demo_tokenizer, training_files
from torchkd.demo.lm.teacher import (
    TEACHER_RECIPE,
    corpus_overrides,
    lm_recipe,
    teacher_weights_path,
)

__all__ = [
    "CORPUS",
    "QUICK_CORPUS",
    "QUICK_MODEL",
    "QUICK_OVERRIDES",
    "LMDemoPlan",
    "describe_lm",
    "plan_lm_demo",
    "quick_overrides",
]

CORPUS = CorpusSettings()
# --quick: a small corpus, a small vocabulary, tiny models and a few steps (tests, smoke runs).
QUICK_CORPUS = CorpusSettings(student_chars=20_000, teacher_chars=12_000, max_file_chars=3_000)
QUICK_MODEL = {
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
QUICK_OVERRIDES = (
    "train.epochs=1",
    "data.kwargs.seq_len=32",
    "data.val_fraction=0.2",
)
_QUICK_STUDENT_DATA = ("data.kwargs.test_fraction=0.2",)
_QUICK_ON_POLICY = ("on_policy.prompt_length=16", "on_policy.max_new_tokens=8")


def describe_lm(config: dict[str, Any]) -> str:
    """``"llama, 6 layers × 256 (4 heads, MLP 688)"`` for an ``hf_causal_lm`` config dict."""
    return (
        f"{config.get('model_type', '?')}, {config.get('num_hidden_layers', '?')} layers × "
        f"{config.get('hidden_size', '?')} ({config.get('num_attention_heads', '?')} heads, MLP "
        f"{config.get('intermediate_size', '?')})"
    )


def quick_overrides(recipe_name: str) -> list[str]:
    """``--quick`` overrides of one demo recipe: tiny models (the student and any teacher),
    short windows, one epoch."""
    recipe = lm_recipe(recipe_name)
    sides = ["student"] + (["teacher"] if recipe.teacher is not None else [])
    overrides = list(QUICK_OVERRIDES)
    if recipe_name != TEACHER_RECIPE:
        overrides += _QUICK_STUDENT_DATA
    for side in sides:
        overrides += [f"{side}.kwargs.config.{key}={value}" for key, value in QUICK_MODEL.items()]
    if getattr(recipe, "on_policy", None) is not None:
        overrides += _QUICK_ON_POLICY
    return overrides


@dataclass(frozen=True)
class LMDemoPlan:
    """Everything a run needs to know before training.

    Attributes:
        student_files: the students' corpus (split into train / val / test by the recipes).
        teacher_files: the teacher's corpus (disjoint from the students').
        tokenizer: the tokenizer directory (trained on both corpora's training files).
        vocab_size: the models' vocabulary size (the tokenizer's is at most this).
        teacher_weights: where the teacher's weights are (or will be) cached.
        topk_dir: the top-k teacher cache's directory.
        overrides: the overrides of each recipe: ``"teacher"`` and every arm's key.
    """

    student_files: list[Path]
    teacher_files: list[Path]
    tokenizer: Path
    vocab_size: int
    teacher_weights: Path
    topk_dir: Path
    overrides: dict[str, list[str]]

    def recipe(self, key: str) -> Any:
        """The resolved recipe of ``"teacher"`` or an arm."""
        name = TEACHER_RECIPE if key == "teacher" else lm_arm(key).recipe
        return lm_recipe(name, self.overrides[key])


def _topk_dir(teacher_weights: Path, recipe: Any) -> Path:
    """``demo_lm/topk-<key>`` under the torchkd cache, keyed by the teacher's weights file (its
    name holds the teacher's fingerprint) and the cache recipe's data settings."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key

    data = recipe.data.model_dump(mode="json")
    data["teacher_cache"].pop("dir", None)
    key = cache_key({"teacher": teacher_weights.name, "data": data})
    return cache_dir() / "demo_lm" / f"topk-{key}"


def plan_lm_demo(corpus: CorpusSettings, quick: bool) -> LMDemoPlan:
    """Pick the corpora, train (or reuse) the tokenizer and resolve every recipe's overrides."""
    student_files, teacher_files = corpus_files(corpus)
    quick_extra = {
        key: quick_overrides(name) if quick else []
        for key, name in [("teacher", TEACHER_RECIPE), *((a.key, a.recipe) for a in LM_ARMS)]
    }
    teacher_bare = lm_recipe(TEACHER_RECIPE, quick_extra["teacher"])
    student_bare = lm_recipe(lm_arm("baseline").recipe, quick_extra["baseline"])
    vocab_size = int(teacher_bare.student.kwargs["config"]["vocab_size"])
    tokenizer = demo_tokenizer(
        training_files(student_files, student_bare.data)
        + training_files(teacher_files, teacher_bare.data),
        vocab_size,
    )
    overrides = {"teacher": [*corpus_overrides(teacher_files, tokenizer), *quick_extra["teacher"]]}
    teacher_weights = teacher_weights_path(lm_recipe(TEACHER_RECIPE, overrides["teacher"]))
    students = corpus_overrides(student_files, tokenizer)
    cache_arm = lm_arm("cache")
    topk_dir = _topk_dir(
        teacher_weights, lm_recipe(cache_arm.recipe, [*students, *quick_extra["cache"]])
    )
    for arm in LM_ARMS:
        recipe = lm_recipe(arm.recipe)
        extra = [*students, *quick_extra[arm.key]]
        if recipe.teacher is not None:
            extra.append(f"teacher.checkpoint={json.dumps(str(teacher_weights))}")
        if getattr(recipe.data, "teacher_cache", None) is not None:
            extra.append(f"data.teacher_cache.dir={json.dumps(str(topk_dir))}")
        overrides[arm.key] = extra
    return LMDemoPlan(
        student_files=student_files,
        teacher_files=teacher_files,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        teacher_weights=teacher_weights,
        topk_dir=topk_dir,
        overrides=overrides,
    )


def check_vocabulary(plan: LMDemoPlan, recipes: Sequence[Any]) -> None:
    """Refuse models whose vocabulary is smaller than the tokenizer's."""
    from torchkd.data.tokenizer import load_tokenizer

    size = len(load_tokenizer(plan.tokenizer))
    for recipe in recipes:
        for side in ("student", "teacher"):
            spec = getattr(recipe, side, None)
            if spec is not None and spec.kwargs["config"]["vocab_size"] < size:
                raise ValueError(
                    f"{recipe.name}: {side}.kwargs.config.vocab_size="
                    f"{spec.kwargs['config']['vocab_size']} is smaller than the tokenizer's "
                    f"{size} tokens ({plan.tokenizer})"
                )
