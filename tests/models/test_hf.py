"""Hugging Face models in the model registry: built from a config or a local directory, never
downloaded; loadable from torchkd checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkd.config import ModelConfig
from torchkd.config.build import build_model
from torchkd.lm import is_causal_lm
from torchkd.models import create_model

LLAMA = {
    "model_type": "llama",
    "vocab_size": 40,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
BERT = {
    "model_type": "bert",
    "vocab_size": 40,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def test_causal_lm_from_config_and_from_its_saved_directory(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("hf_causal_lm", config=LLAMA)
    assert is_causal_lm(model) and model.config.hidden_size == 16
    model.save_pretrained(tmp_path / "lm")
    loaded = create_model("hf_causal_lm", path=str(tmp_path / "lm"))
    ids = torch.randint(0, 40, (2, 5))
    torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    half = create_model("hf_causal_lm", path=str(tmp_path / "lm"), dtype="bfloat16")
    assert half.lm_head.weight.dtype == torch.bfloat16
    assert create_model("hf_causal_lm", config=LLAMA, dtype="float16").dtype == torch.float16


def test_encoder_from_config_gives_hidden_states() -> None:
    encoder = create_model("hf_encoder", config=BERT)
    ids = torch.randint(0, 40, (3, 6))
    output = encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert output.last_hidden_state.shape == (3, 6, 16) and not is_causal_lm(encoder)


def test_hub_id_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never downloads") as caught:
        create_model("hf_causal_lm", path="meta-llama/Llama-3.2-1B")
    assert "save_pretrained" in str(caught.value)
    with pytest.raises(ValueError, match="never downloads"):
        create_model("hf_encoder", path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="exactly one of path"):
        create_model("hf_causal_lm")
    with pytest.raises(ValueError, match="exactly one of path"):
        create_model("hf_causal_lm", path=str(tmp_path), config=LLAMA)
    with pytest.raises(ValueError, match="model_type"):
        create_model("hf_causal_lm", config={"vocab_size": 40})
    with pytest.raises(ValueError, match="dtype must be one of"):
        create_model("hf_causal_lm", config=LLAMA, dtype="fp8")


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"pip install 'torchkd\[hf\]'"):
        create_model("hf_causal_lm", config=LLAMA)


def test_recipe_model_loads_a_checkpoint_into_an_hf_model(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = create_model("hf_causal_lm", config=LLAMA)
    torch.save(trained.state_dict(), tmp_path / "weights.pt")
    spec = ModelConfig(
        model="hf_causal_lm", kwargs={"config": LLAMA}, checkpoint=str(tmp_path / "weights.pt")
    )
    loaded = build_model(spec, "teacher")
    for (name, expected), got in zip(
        trained.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, expected, msg=name)
    assert isinstance(loaded, nn.Module) and loaded.lm_head.weight is not trained.lm_head.weight
