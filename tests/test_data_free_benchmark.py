"""``benchmarks/data_free_mnist1d.py --dry-run``: every arm (labelled, label-free on real
samples, data-free) builds from its recipe and trains a few steps; the table renders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "data_free_mnist1d.py"


def test_dry_run_trains_every_arm_and_writes_the_table(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("data_free_mnist1d", BENCHMARK)
    assert spec is not None and spec.loader is not None
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    out = tmp_path / "table.md"
    benchmark.main(["--dry-run", "--seeds", "0", "--workers", "1", "--out", str(out)])
    table = out.read_text()
    for label in benchmark.ARMS.values():
        assert f"| {label} | " in table
    assert "3 runs in" in table and "| 1 | 2 |" in table  # one seed, two Adam steps each
