"""``bash benchmarks/gpu_check.sh --dry-run``: every section of the CUDA check runs on the CPU
at small shapes and the table it writes reports each with numbers or ``skipped: reason``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("(a)", "(b)", "(c)", "(d)", "(e)")
NUMBER = re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?")


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert "Dry run on the CPU" in text and "--dry-run" in text
    summary = {
        line.split("|")[1].strip()[:3]: line.split("|")[2].strip()
        for line in text.splitlines()
        if line.startswith("| (")
    }
    assert sorted(summary) == list(SECTIONS)
    for section, result in summary.items():
        assert result == "ok" or result.startswith("skipped: "), (section, result)
    assert summary["(e)"] == "skipped: dry run on the CPU (NCCL needs CUDA GPUs)"
    details = text.split("\n## ")[1:]
    assert [part[:3] for part in details] == list(SECTIONS)
    for part in details:
        title, *body = part.splitlines()
        rows = [line for line in body if line.startswith("| ") and "---" not in line][1:]
        if summary[title[:3]].startswith("skipped: "):
            assert not rows, title
            continue
        assert rows, title
        for row in rows:
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert any(NUMBER.fullmatch(cell.replace(",", "")) for cell in cells) or any(
                cell.startswith("skipped: ") for cell in cells
            ), (title, row)
    correctness = details[0]
    assert correctness.count("| pass |") == 12 and "FAIL" not in correctness
