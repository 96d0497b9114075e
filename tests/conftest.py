"""Test-session settings: eager loss paths and one thread (the suite shares 2 cores)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

import torchkd.data

# Losses that can be compiled run their eager path under test: compilation is slow to warm up
# and its numerics are covered by the eager path's tests.
os.environ.setdefault("TORCHKD_COMPILE", "0")
torch.set_num_threads(1)

# Shared CI machines are noisy: no per-example deadline for property tests.
settings.register_profile("torchkd", deadline=None)
settings.load_profile("torchkd")


@pytest.fixture
def built_splits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The split of every dataset built during the test, in order (e.g. to prove that a
    search never builds the test split)."""
    built: list[str] = []
    create_dataset = torchkd.data.create_dataset

    def recording(name: str, split: str = "train", **kwargs: object) -> object:
        built.append(split)
        return create_dataset(name, split, **kwargs)

    monkeypatch.setattr(torchkd.data, "create_dataset", recording)
    return built


TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 61,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}


@pytest.fixture
def tiny_causal_lm() -> object:
    """A factory of tiny Llama causal LMs built from a config (no download):
    ``tiny_causal_lm(seed, **config_overrides)``, in float64 unless ``dtype`` is given."""
    from torchkd.models import create_model

    def build(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides: object) -> object:
        torch.manual_seed(seed)
        return create_model("hf_causal_lm", config={**TINY_LLAMA, **overrides}).to(dtype)

    return build
