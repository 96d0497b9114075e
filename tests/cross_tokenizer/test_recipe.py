"""``torchkd train RECIPE`` on the ``text`` dataset with ``data.kwargs.teacher_tokenizer``: a
tiny Llama student (the 1024-token tokenizer) taught by a tiny Llama teacher with its own
512-token tokenizer, through ``uld``, ``hybrid_uld`` and ``fused_linear_uld`` terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from torchkd.cli import main
from torchkd.config.errors import ConfigError

from .pair import STRINGS, STUDENT_VOCAB, TEACHER_VOCAB

LLAMA = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def recipe(tmp_path: Path, directory: Path, terms: list[dict], teacher_vocab: int) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for number, text in enumerate(STRINGS * 4):
        (docs / f"doc{number:02d}.txt").write_text(f"{text} [{number}]", encoding="utf-8")
    settings = {
        "name": "cross_tokenizer",
        "data": {
            "dataset": "text",
            "batch_size": 4,
            "kwargs": {
                "files": str(docs / "*.txt"),
                "tokenizer": str(directory / "student"),
                "teacher_tokenizer": str(directory / "teacher"),
                "seq_len": 16,
                "cache": str(tmp_path / "cache"),
            },
        },
        "student": {
            "model": "hf_causal_lm",
            "kwargs": {"config": {**LLAMA, "vocab_size": STUDENT_VOCAB}},
        },
        "teacher": {
            "model": "hf_causal_lm",
            "kwargs": {"config": {**LLAMA, "vocab_size": teacher_vocab, "hidden_size": 24}},
            "untrained": True,
        },
        "terms": terms,
        "train": {
            "epochs": 1,
            "optimizer": {"name": "adamw", "lr": 0.003},
            "device": "cpu",
            "progress": False,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_train_with_a_teacher_of_another_tokenizer(tokenizer_pair, tmp_path: Path) -> None:
    _, _, directory = tokenizer_pair
    terms = [
        {"name": "uld", "loss": "uld", "loss_kwargs": {"hard_label_weight": 1.0}, "weight": 0.5},
        {"name": "hybrid", "loss": "hybrid_uld", "temperature": 2.0, "weight": 0.5},
        {"name": "fused", "loss": "fused_linear_uld", "weight": 0.5},
    ]
    path = recipe(tmp_path, directory, terms, TEACHER_VOCAB)
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "checkpoints" / "last.pt").exists()
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "perplexity" in str(final)
    assert {"terms/uld", "terms/hybrid", "terms/fused"} <= set(final.get("val", {}))


def test_a_teacher_vocabulary_smaller_than_its_tokenizer_is_refused(
    tokenizer_pair, tmp_path: Path
) -> None:
    _, _, directory = tokenizer_pair
    terms = [{"name": "uld", "loss": "uld"}]
    path = recipe(tmp_path, directory, terms, TEACHER_VOCAB - 1)
    from torchkd.config import load_recipe
    from torchkd.config.build import build_distiller

    with pytest.raises(ConfigError, match=r"data\.kwargs\.teacher_tokenizer: .* has 512 tokens"):
        build_distiller(load_recipe(path))


def test_on_policy_sampling_is_refused(tokenizer_pair, tmp_path: Path) -> None:
    _, _, directory = tokenizer_pair
    path = recipe(tmp_path, directory, [{"name": "uld", "loss": "uld"}], TEACHER_VOCAB)
    settings = yaml.safe_load(path.read_text())
    settings["on_policy"] = {"fraction": 0.5, "max_new_tokens": 4, "prompt_length": 8}
    path.write_text(yaml.safe_dump(settings))
    from torchkd.config import load_recipe
    from torchkd.config.build import build_distiller

    with pytest.raises(ConfigError, match="on_policy: the student's sampled continuations"):
        build_distiller(load_recipe(path))
