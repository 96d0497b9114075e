"""``torchkd train RECIPE`` with a ULD term between a student and a teacher of different
vocabulary sizes (48 and 64 entries; the token ids are the student's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_lm_recipe import VOCAB, final_metrics, recipe, token_dataset, train

__all__ = ["token_dataset"]  # the fixture, imported for this module's tests


@pytest.mark.parametrize("loss", ["fused_linear_uld", "uld"])
def test_train_recipe_with_a_uld_term(token_dataset: str, tmp_path: Path, loss: str) -> None:
    terms = [
        {"name": "uld", "loss": loss, "loss_kwargs": {"hard_label_weight": 1.0}, "weight": 0.5}
    ]
    settings = recipe(token_dataset, terms)
    settings["teacher"]["kwargs"]["config"]["vocab_size"] = VOCAB + 16
    run_dir = train(tmp_path, settings)
    assert (run_dir / "checkpoints" / "last.pt").exists()
    metrics = str(final_metrics(run_dir))
    assert "perplexity" in metrics
    # the teacher's ids are of another vocabulary: no agreement or teacher accuracy
    assert "agreement" not in metrics and "teacher_top1" not in metrics
