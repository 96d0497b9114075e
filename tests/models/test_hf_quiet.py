"""transformers' per-load progress bars ("Loading weights", "Writing model shards") stay out
of torchkd's output when it loads or exports a Hugging Face model, and are on again after."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchkd.models import create_model
from torchkd.train import export_pretrained

from .test_hf import LLAMA

transformers = pytest.importorskip("transformers")


def test_loading_and_exporting_show_no_transformers_progress_bars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = transformers.utils.logging
    assert bars.is_progress_bar_enabled()
    model = create_model("hf_causal_lm", config=LLAMA)
    model.save_pretrained(tmp_path / "plain")  # transformers itself, outside torchkd
    assert "Writing model shards" in capsys.readouterr().err  # the bars this test watches for
    export_pretrained(model, tmp_path / "exported")
    create_model("hf_causal_lm", path=str(tmp_path / "exported"))
    error = capsys.readouterr().err
    assert "Writing model shards" not in error and "Loading weights" not in error
    assert bars.is_progress_bar_enabled()  # restored for the user's own transformers calls
