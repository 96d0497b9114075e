"""``hf_sentence_encoder``: mean pooling over real tokens, L2-normalized (sentence-transformers'
pooling), on a tiny BERT built from a config."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from torchkd.models import create_model
from torchkd.models.hf import MeanPool, SentenceEncoder

BERT = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 16,
}


def test_mean_pool_matches_a_loop() -> None:
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    expected = torch.stack([hidden[i, : int(mask[i].sum())].mean(0) for i in range(3)])
    torch.testing.assert_close(MeanPool()(hidden, mask), expected)
    with pytest.raises(ValueError, match="attention_mask"):
        MeanPool()(hidden, mask[:, :3])


def test_sentence_encoder_pools_real_tokens_and_normalizes() -> None:
    torch.manual_seed(0)
    # In float64: padding invariance is structural, so the check needs no float32 tolerance
    # (the two passes differ only in summation order; float64 keeps that under assert_close's
    # float64 defaults, rtol 1e-7 and atol 1e-7, while attending to the padding moves it by 1e-3).
    model = create_model("hf_sentence_encoder", config=BERT).eval().double()
    assert isinstance(model, SentenceEncoder) and isinstance(model.pool, MeanPool)
    input_ids = torch.tensor([[2, 7, 9, 3, 0, 0], [2, 5, 6, 8, 11, 3]])
    attention_mask = (input_ids != 0).long()
    with torch.no_grad():
        embeddings = model(input_ids=input_ids, attention_mask=attention_mask)
        for row in range(2):  # each sentence alone, unpadded: the same embedding
            length = int(attention_mask[row].sum())
            alone = model.encoder(
                input_ids=input_ids[row : row + 1, :length],
                attention_mask=attention_mask[row : row + 1, :length],
            ).last_hidden_state[0]
            expected = torch.nn.functional.normalize(alone.mean(0), dim=0)
            torch.testing.assert_close(embeddings[row], expected)
    assert embeddings.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])
