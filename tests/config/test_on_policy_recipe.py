"""The recipe's ``on_policy:`` section: validation with YAML paths and building OnPolicy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from torchkd.cli import main
from torchkd.config import ConfigError, ModelConfig, build_model, build_on_policy, recipe_from_dict
from torchkd.lm.on_policy import OnPolicy

RECIPE = """
name: gkd
data: {dataset: digits}
teacher: {model: mlp, kwargs: {in_features: 64, num_classes: 10}, untrained: true}
student: {model: mlp, kwargs: {in_features: 64, num_classes: 10}}
terms: [{name: kd, loss: kd}]
train: {seed: 7}
on_policy: {fraction: 0.5, max_new_tokens: 16, temperature: 0.8, top_k: 40, prompt_length: 8}
"""


def recipe_data() -> dict:
    return yaml.safe_load(RECIPE)


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        recipe_from_dict(data)
    return caught.value.problems


def test_the_section_builds_an_on_policy_seeded_by_the_run() -> None:
    recipe = recipe_from_dict(recipe_data())
    assert recipe.on_policy is not None
    built = build_on_policy(recipe.on_policy, recipe.train.seed)
    assert built == OnPolicy(
        fraction=0.5, max_new_tokens=16, temperature=0.8, top_k=40, prompt_length=8, seed=7
    )
    data = recipe_data()
    data["on_policy"].update(seed=3, source="teacher")
    recipe = recipe_from_dict(data)
    assert build_on_policy(recipe.on_policy, recipe.train.seed).seed == 3
    assert recipe.on_policy.source == "teacher"
    data = recipe_data()
    del data["on_policy"]
    assert recipe_from_dict(data).on_policy is None


def test_bad_sections_name_the_path() -> None:
    data = recipe_data()
    data["on_policy"].update(fraction=1.5, max_new_tokens=0, source="oracle")
    assert problems(data) == [
        "on_policy.fraction: expected a value less than or equal to 1, got 1.5",
        "on_policy.max_new_tokens: expected a value greater than 0, got 0",
        "on_policy.source: expected one of 'student' or 'teacher', got 'oracle'",
    ]
    data = recipe_data()
    data["on_policy"]["lambda"] = 0.5
    assert problems(data)[0].startswith("on_policy.lambda: unknown key")
    data = recipe_data()
    del data["teacher"]
    assert problems(data) == [
        "on_policy: on-policy distillation needs a teacher to score (or, with source: teacher, "
        "to generate) the sampled tokens; give teacher or teachers"
    ]
    data = recipe_data()
    data["terms"] = [{"name": "kd", "loss": "fused_linear_kd", "teacher": "cache"}]
    assert problems(data) == [
        "on_policy: terms.0 reads the teacher cache, which holds the teacher's distributions "
        "on the dataset's tokens only, not on sampled ones; score on-policy samples with a "
        "teacher model (teacher: logits)"
    ]


def prompt_completion_recipe(tmp_path: Path) -> dict[str, Any]:
    """A tiny Llama pair on prompt/completion pairs of the ``text`` dataset, with a tokenizer
    trained here (the models' eos and pad ids are the tokenizer's)."""
    from torchkd.data import train_bpe_tokenizer

    records = [{"prompt": f"def f{i}(x):", "completion": f" return x + {i}"} for i in range(12)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(record) + "\n" for record in records))
    texts = [record["prompt"] + record["completion"] for record in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, directory=tmp_path / "tokenizer")
    llama = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {
        "name": "gkd_text",
        "data": {
            "dataset": "text",
            "batch_size": 4,
            "val_fraction": 0.2,
            "kwargs": {
                "files": [str(pairs)],
                "tokenizer": str(tmp_path / "tokenizer"),
                "seq_len": 16,
                "format": "prompt_completion",
                "max_prompt_length": 8,
                "cache": str(tmp_path / "cache"),
            },
        },
        "student": {"model": "hf_causal_lm", "kwargs": {"config": llama}},
        "teacher": {
            "model": "hf_causal_lm",
            "kwargs": {"config": {**llama, "hidden_size": 24}},
            "untrained": True,
        },
        "terms": [
            {"name": "gkd", "loss": "fused_linear_kd", "loss_kwargs": {"divergence": "reverse_kl"}}
        ],
        "train": {
            "epochs": 1,
            "grad_accum_steps": 2,
            "optimizer": {"name": "adamw", "lr": 0.003},
            "device": "cpu",
            "progress": False,
        },
    }


def trained_student(tmp_path: Path, settings: dict[str, Any], name: str) -> torch.nn.Module:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    run_dir = tmp_path / name
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0
    checkpoint = str(run_dir / "checkpoints" / "last.pt")
    return build_model(ModelConfig(**settings["student"], checkpoint=checkpoint))


def test_torchkd_train_samples_from_the_prompts_of_prompt_completion_data(
    tmp_path: Path,
) -> None:
    settings = prompt_completion_recipe(tmp_path)
    supervised = trained_student(tmp_path, settings, "supervised")
    settings["on_policy"] = {"fraction": 1.0, "max_new_tokens": 6, "temperature": 1.5}
    on_policy = trained_student(tmp_path, settings, "on_policy")
    assert not torch.equal(supervised.lm_head.weight, on_policy.lm_head.weight)
