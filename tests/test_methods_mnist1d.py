"""``benchmarks/methods_mnist1d.py``: the self group's table (no training here)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    # as when run as a script: benchmarks/ is on sys.path, so the entry point finds methods/
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("methods_mnist1d")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        for name in [n for n in sys.modules if n.split(".")[0] in ("methods", "methods_mnist1d")]:
            del sys.modules[name]


def run(method: str, seed: int, top1: float, generation: int | None = None) -> dict:
    record = {"method": method, "student": "cnn", "setting": "labeled", "seed": seed}
    record |= {"test_top1": top1, "nonfinite_steps": 0, "seconds": 1.0}
    return record | ({"generation": generation} if generation else {})


def test_born_again_rows_are_paired_with_the_teacher_architecture_baseline(bench):
    records = [run("baseline", s, 80.0) for s in (0, 1)]
    records += [run("baseline_wide", s, 90.0 + s) for s in (0, 1)]
    records += [run("born_again", s, 92.0 + s, generation=g) for s in (0, 1) for g in (1, 2, 3)]
    table = bench.render_table(records, [], "self")
    labeled = table.split("### CNN student, transfer setting")[0]
    for generation in (1, 2, 3):
        row = f"| born-again, teacher architecture, generation {generation} | 92.5 ± 0.7 | +2.0 "
        assert row + "| +2.0 ± 0.0 | 2/2 | 2 |" in labeled
    assert "| baseline (CE), teacher architecture | 90.5 ± 0.7 | — |" in labeled
    assert "| SEED + label-free KD | not run |" in labeled
    assert "MLP student" not in table


def test_the_self_group_has_its_own_key_table_and_methods(bench):
    assert bench.config_key(1200, "self") != bench.config_key(1200, "all")
    assert bench.table_path(1200, "self").name == "methods_mnist1d_self.md"
    args = bench.parse_args(["--group", "self"])
    assert args.methods == list(bench.GROUPS["self"]) and args.students == ["cnn"]
    assert "born_again" not in bench.parse_args([]).methods
    with pytest.raises(SystemExit):
        bench.parse_args(["--group", "self", "--methods", "dist"])
