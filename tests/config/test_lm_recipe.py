"""``torchkd train RECIPE`` end to end on a tiny Llama teacher/student pair built from config
dicts, on token samples in the text-data format (a dataset registered for the test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch.utils.data import Dataset, default_collate

from torchkd.cli import main
from torchkd.config import ModelConfig
from torchkd.config.build import build_model
from torchkd.data.registry import DATASETS
from torchkd.lm import next_token_labels
from torchkd.losses import TopKLogits

VOCAB, WIDTH, K = 48, 10, 4
LLAMA = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
}


class TokenSamples(Dataset):
    """Random right-padded token sequences (spec format), with a random top-k teacher cache;
    indexable by one position or a list of them (a batch)."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.samples = []
        for index in range(size):
            input_ids = torch.randint(0, VOCAB, (WIDTH,), generator=generator)
            length = int(torch.randint(2, WIDTH + 1, (), generator=generator))
            mask = (torch.arange(WIDTH) < length).long()
            logits = torch.randn(WIDTH, VOCAB, generator=generator)
            sparse = TopKLogits.from_logits(logits, K, temperature=2.0)
            self.samples.append(
                {
                    "inputs": {"input_ids": input_ids, "attention_mask": mask},
                    "labels": next_token_labels(input_ids, mask),
                    "index": torch.tensor(index),
                    "teacher_topk_ids": sparse.token_ids,
                    "teacher_topk_log_probs": sparse.log_probs,
                    "teacher_topk_tail": sparse.tail_log_mass,
                }
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | list[int]) -> dict[str, Any]:
        if isinstance(key, int):
            return self.samples[key]
        return default_collate([self.samples[i] for i in key])


@pytest.fixture
def token_dataset(monkeypatch: pytest.MonkeyPatch) -> str:
    def create(split: str = "train", **kwargs: object) -> TokenSamples:
        return TokenSamples(16 if split == "train" else 6, seed=len(split))

    monkeypatch.setitem(DATASETS._entries, "test_tokens", create)
    return "test_tokens"


def recipe(dataset: str, terms: list[dict], teacher: bool = True) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "name": "tiny_lm",
        "data": {"dataset": dataset, "batch_size": 4},
        "student": {"model": "hf_causal_lm", "kwargs": {"config": LLAMA}},
        "terms": terms,
        "train": {
            "epochs": 1,
            "grad_accum_steps": 2,
            "optimizer": {"name": "adamw", "lr": 0.003},
            "device": "cpu",
            "progress": False,
        },
    }
    if teacher:
        wider = {**LLAMA, "hidden_size": 24, "num_hidden_layers": 3}
        settings["teacher"] = {
            "model": "hf_causal_lm",
            "kwargs": {"config": wider},
            "untrained": True,
        }
    return settings


def train(tmp_path: Path, settings: dict[str, Any]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0
    return run_dir


def final_metrics(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def test_train_recipe_with_fused_and_hidden_state_terms(token_dataset: str, tmp_path: Path) -> None:
    terms = [
        {
            "name": "kd",
            "loss": "fused_linear_kd",
            "temperature": 2.0,
            "loss_kwargs": {"hard_label_weight": 0.5},
        },
        {
            "name": "hint",
            "loss": "hint",
            "student": "model.layers.1",
            "teacher": "model.layers.2",
            "weight": 0.1,
        },
    ]
    run_dir = train(tmp_path, recipe(token_dataset, terms))
    checkpoint = run_dir / "checkpoints" / "last.pt"
    spec = ModelConfig(model="hf_causal_lm", kwargs={"config": LLAMA}, checkpoint=str(checkpoint))
    student = build_model(spec, "teacher")  # the trained student as next run's teacher
    fresh = build_model(ModelConfig(model="hf_causal_lm", kwargs={"config": LLAMA}), "student")
    assert not torch.equal(student.lm_head.weight, fresh.lm_head.weight)
    text = json.dumps(final_metrics(run_dir))
    assert "perplexity" in text, text
    header = next(
        line for line in (run_dir / "report.md").read_text().splitlines() if "| |" in line
    )
    assert "perplexity" in [cell.strip() for cell in header.split("|")], header


def test_train_recipe_from_the_teacher_cache_without_a_teacher(
    token_dataset: str, tmp_path: Path
) -> None:
    terms = [{"name": "kd", "loss": "fused_linear_kd", "teacher": "cache", "temperature": 2.0}]
    run_dir = train(tmp_path, recipe(token_dataset, terms, teacher=False))
    assert (run_dir / "checkpoints" / "last.pt").exists()


def test_train_recipe_on_the_text_dataset(tmp_path: Path) -> None:
    """Prompt/completion pairs through the real ``text`` dataset and a tokenizer trained here:
    padding and prompt positions are -100, the fused and hint terms train, perplexity is
    reported."""
    from torchkd.data import train_bpe_tokenizer

    records = [
        {"prompt": f"def f{i}(x):", "completion": f" return x * {i} + {i % 3}"} for i in range(40)
    ]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(record) + "\n" for record in records))
    texts = [record["prompt"] + record["completion"] for record in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, directory=tmp_path / "tokenizer")
    config = {**LLAMA, "vocab_size": len(tokenizer), "max_position_embeddings": 32}
    terms = [
        {"name": "kd", "loss": "fused_linear_kd", "temperature": 2.0},
        {"name": "hint", "loss": "hint", "student": "model.layers.1", "teacher": "model.layers.1"},
    ]
    settings = recipe("text", terms)
    settings["student"]["kwargs"]["config"] = config
    settings["teacher"]["kwargs"]["config"] = {**config, "hidden_size": 24}
    settings["data"] = {
        "dataset": "text",
        "batch_size": 8,
        "val_fraction": 0.2,
        "kwargs": {
            "files": [str(pairs)],
            "tokenizer": str(tmp_path / "tokenizer"),
            "seq_len": 24,
            "format": "prompt_completion",
            "max_prompt_length": 12,
            "test_fraction": 0.1,
            "cache": str(tmp_path / "cache"),
        },
    }
    run_dir = train(tmp_path, settings)
    record = final_metrics(run_dir)
    assert "perplexity" in json.dumps(record), record
