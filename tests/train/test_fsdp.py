"""FSDP2 per transformer block, sharded validation, and FSDP checkpoints resumed on another
number of processes (2 -> 1, 1 -> 2). Select with ``-m distributed``.

The spawned runs share ``test_distributed.py``'s one 2-process session
(``distributed_cases.all_cases`` calls ``fsdp_cases.fsdp_cases``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from torchkd.data.batching import batch_loader
from torchkd.train import evaluate

from . import distributed_cases as cases
from . import fsdp_cases
from .test_distributed import TRAINED, load, max_difference, spawned  # noqa: F401 (fixture)


@pytest.mark.distributed
def test_per_block_fsdp_with_the_fused_loss_equals_one_process(
    spawned: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A tied float64 Llama student and a sharded Llama teacher, each decoder layer its own
    FSDP unit, fused hidden-state KD on uneven sequences: 2 processes == 1 process (TRAINED
    bounds the float64 rounding of summation order over these 4 steps; 2.8e-17 measured), also
    accumulating 2 micro-batches a step."""
    rank0, rank1 = (load(spawned / f"llama-fsdp.rank{r}.pt") for r in (0, 1))
    assert all(rank0["units"].values()), rank0["units"]  # layers, student and teacher
    assert len(rank0["units"]) == 6
    _, single = fsdp_cases.run_llama(tmp_path / "one", distributed="none")
    assert max_difference(single, rank0["state"]) < TRAINED
    assert max_difference(rank0["state"], rank1["state"]) == 0.0
    # accumulating 2 micro-batches (gradient sync off for the first, the root kept gathered)
    _, single = fsdp_cases.run_llama(tmp_path / "accum", distributed="none", grad_accum_steps=2)
    assert max_difference(single, load(spawned / "llama-fsdp-accum.rank0.pt")) < TRAINED


@pytest.mark.distributed
def test_sharded_validation_equals_one_process(spawned: Path) -> None:  # noqa: F811
    """The FSDP run's last validation (batches of 3, 3, 2: 2 on rank 0, 1 on rank 1) equals
    one process evaluating the same final weights on all 3 batches: counts exactly, sums up to
    the rounding of their order."""
    lines = (spawned / "llama-fsdp" / "metrics.jsonl").read_text().splitlines()
    sharded = [r for r in map(json.loads, lines) if r["kind"] == "epoch"][-1]["val"]
    distiller = fsdp_cases.llama_distiller()
    state = load(spawned / "llama-fsdp.rank0.pt")["state"]
    distiller.load_state_dict(state, strict=False)  # the student; the teacher is rebuilt
    data = cases.UnevenTokens()
    distiller.build(data[[0, 1]])
    single = evaluate(distiller, batch_loader(data, 3, shuffle=False), with_terms=True)
    assert sharded.keys() == single.keys()
    assert sharded["samples"] == single["samples"] == 8.0
    assert sharded == pytest.approx(single, rel=1e-12, abs=1e-12)


@pytest.mark.distributed
def test_fsdp_checkpoints_resume_on_another_number_of_processes(
    spawned: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The "logit" case on FSDP: 2 epochs on 2 processes then the 3rd on 1, and 1 epoch on
    1 process then 2 more on 2, each equal to 3 epochs on one process."""
    shutil.copytree(spawned / "logit-fsdp", tmp_path / "two-to-one")
    one = fsdp_cases.torchrun(
        1, f"resume:{tmp_path / 'two-to-one'}:3", f"start:{tmp_path / 'one-to-two'}:1"
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = fsdp_cases.torchrun(2, f"resume:{tmp_path / 'one-to-two'}:3")
    assert two.returncode == 0, two.stderr[-3000:]
    straight = cases.run("logit", tmp_path / "straight", epochs=3)
    for name in ("two-to-one", "one-to-two"):
        assert max_difference(straight, load(tmp_path / name / "final.pt")) < TRAINED, name
