"""The run's ``metrics.jsonl`` on resume: records after the checkpoint are dropped, and a last
line torn by a kill in the middle of a write is dropped with them."""

from __future__ import annotations

import json
from pathlib import Path

from torchkd.train.logging import RunLogger, read_jsonl


def test_resume_drops_later_records_and_a_torn_last_line(tmp_path: Path) -> None:
    records = [{"kind": "step", "epoch": 1, "step": step, "loss": 0.5} for step in (1, 2, 3)]
    whole = "".join(json.dumps(record) + "\n" for record in records)
    (tmp_path / "metrics.jsonl").write_text(whole + '{"kind": "step", "epoch": 1, "st')
    logger = RunLogger(tmp_path, resume_step=2, resume_epoch=0, tensorboard=False)
    logger.log_step({"epoch": 1, "step": 3, "loss": 0.25})
    logger.close()
    steps = [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [(1, 0.5), (2, 0.5), (3, 0.25)]
