"""Training on 2 processes (gloo, CPU) equals training on one; resume after a kill is exact;
FSDP2 equals DDP; a failure on one rank stops the run with its message.

The spawned cases share one 2-process session (``distributed_cases.all_cases``, run once per
test run even under xdist); the torchrun cases launch ``distributed_cases.py`` as a script.
Select them with ``-m distributed``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from tolerances import FLOAT64_EPS, float32_tolerance
from torch import Tensor, nn

from torchkd.data.batching import BatchOrder
from torchkd.distiller import Distiller, Term
from torchkd.losses.distributed import gather_rows, gather_rows_with_grad
from torchkd.train.distributed import Parallel, rank_seed

from . import distributed_cases as cases

CASES = Path(cases.__file__)
# The compared runs are float64 and differ in summation order only (2 shares and an all-reduce
# vs one batch, FSDP's reduce-scatter vs DDP's all-reduce, 2 micro-batches vs one): a step's
# rounding is ≤ n ε₆₄ of terms ≤ 1 (n ≤ 64 per sum: batch rows or the widest layer), and each
# later step amplifies an earlier difference by at most 1 + ηL; over the ≤ 24 steps (3 epochs
# of 8) this allows (1 + ηL)^24 ≤ 10⁶ (ηL ≤ 0.78). Far below the ≥ 1e-3 of a wrong reduction.
TRAINED = 1e6 * float32_tolerance(24 * 64, 1.0, FLOAT64_EPS)


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def load(path: Path) -> dict[str, Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The results of the one spawned 2-process session; under xdist the workers share it
    (the first to arrive runs it, the others wait for it)."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp("spawned")
        cases.spawn(cases.all_cases, str(out))
        return out
    out = tmp_path_factory.getbasetemp().parent / "distributed-spawned"  # this run's, shared
    with FileLock(f"{out}.lock"):
        if not (out / "done").is_file():
            out.mkdir(exist_ok=True)
            cases.spawn(cases.all_cases, str(out))
            (out / "done").touch()
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("case", sorted(cases.TERMS))
def test_two_processes_equal_one_with_the_global_batch(
    spawned: Path, tmp_path: Path, case: str
) -> None:
    """2 ranks x batch 8 for 8 steps == 1 rank x batch 16 (student and extras: adapters,
    CRD heads and memory banks, SEED's head and queue, the "auto" uncertainty weight)."""
    single = cases.run(case, tmp_path / "one")
    rank0, rank1 = (load(spawned / f"{case}.rank{r}.pt") for r in (0, 1))
    assert max_difference(single, rank0) < TRAINED
    assert max_difference(rank0, rank1) == 0.0  # identical on every rank (banks, weights)
    learned = {
        "crd": ["weight.log_variance", "student_bank"],
        "logit": ["temperature"],
        "seed": ["queue", "queue_pointer"],
    }
    for name in learned.get(case, []):  # "auto" weights, learned temperatures, CRD banks, queue
        assert any(name in key for key in rank0), (name, sorted(rank0))


@pytest.mark.distributed
def test_token_loss_normalized_by_the_global_count(spawned: Path) -> None:
    """Shares with 7 and 2 valid tokens: num_items_in_batch from data_parallel_num_items
    gives the whole batch's gradient; each share's own count does not."""
    differences = torch.load(spawned / "token-normalization.pt", weights_only=True)
    assert differences["global"] < 1e-12
    assert differences["local"] > 1e-3


@pytest.mark.distributed
def test_fused_token_loss_accumulated_on_two_processes_equals_one_batch(
    spawned: Path, tmp_path: Path
) -> None:
    """The loop's num_items_in_batch (valid tokens of all micro-batches and ranks): one step of
    2 micro-batches x 2 ranks on sequences with 1 to 6 valid tokens == the one-batch step."""
    expected = cases.fused_whole_batch_step()
    rank0, rank1 = (load(spawned / f"fused-ddp-accum.rank{r}.pt") for r in (0, 1))
    assert max_difference(expected, rank0) < 1e-12 and max_difference(rank0, rank1) == 0.0
    single = cases.run_fused(tmp_path / "one", distributed="none")
    assert max_difference(expected, single) < 1e-12


@pytest.mark.distributed
def test_a_two_process_checkpoint_resumes_on_one_process(spawned: Path, tmp_path: Path) -> None:
    """DDP on 2 processes for 2 epochs, then one more epoch on one process == 3 epochs on one."""
    shutil.copytree(spawned / "feature", tmp_path / "resumed")
    resumed = cases.run("feature", tmp_path / "resumed", epochs=3, resume=True)
    straight = cases.run("feature", tmp_path / "straight", epochs=3)
    assert max_difference(straight, resumed) < TRAINED


@pytest.mark.distributed
def test_gradient_accumulation_matches_one_process(spawned: Path, tmp_path: Path) -> None:
    single = cases.run("logit", tmp_path / "one", batch_size=8, grad_accum_steps=2)
    assert max_difference(single, load(spawned / "accum.rank0.pt")) < TRAINED


@pytest.mark.distributed
def test_fsdp_with_sharded_teacher_follows_ddp(spawned: Path) -> None:
    """A tiny transformer pair: FSDP2 student + sharded teacher vs DDP, same loss curve."""

    def curve(name: str) -> list[float]:
        lines = (spawned / name / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "step"]

    ddp, fsdp = curve("lm-ddp"), curve("lm-fsdp")
    assert len(ddp) == 8
    assert ddp == pytest.approx(fsdp, rel=TRAINED, abs=TRAINED)  # losses of TRAINED-close weights
    assert ddp[-1] < ddp[0]
    assert (
        max_difference(load(spawned / "lm-ddp.rank0.pt"), load(spawned / "lm-fsdp.rank0.pt"))
        < TRAINED
    )
    checkpoints = spawned / "lm-fsdp" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.dcp", "last.dcp"]
    assert (checkpoints / "last.dcp" / "trainer.rank1.pt").is_file()


@pytest.mark.distributed
def test_fsdp_matches_one_process_with_crd_and_accumulation(spawned: Path, tmp_path: Path) -> None:
    """FSDP with CRD (banks, heads and the 0-d "auto" weight, evaluated directly) equals one
    process; FSDP accumulating 2 micro-batches equals DDP accumulating them (the LM's AdamW
    turns the rounding noise of the attention's key bias, whose true gradient is 0, into
    1e-3 updates in float32, so accumulated and whole batches are compared alike)."""
    single = cases.run("crd", tmp_path / "one")
    assert max_difference(single, load(spawned / "crd-fsdp.rank0.pt")) < TRAINED
    accumulated = load(spawned / "lm-fsdp-accum.rank0.pt")
    assert max_difference(load(spawned / "lm-ddp-accum.rank0.pt"), accumulated) < TRAINED


@pytest.mark.distributed
def test_fsdp_resume_is_exact(spawned: Path) -> None:
    straight, resumed = (
        load(spawned / "lm-fsdp.rank0.pt"),
        load(spawned / "lm-fsdp-resumed.rank0.pt"),
    )
    assert max_difference(straight, resumed) == 0.0


@pytest.mark.distributed
def test_rank_zero_alone_writes(spawned: Path) -> None:
    run_dir = spawned / "logit"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "metrics.jsonl", "tb"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 9))


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node 2 distributed_cases.py ARGS``."""
    return cases.torchrun(str(CASES), *args)


@pytest.mark.distributed
def test_resume_after_a_kill_under_torchrun_is_exact(tmp_path: Path) -> None:
    step = random.Random().randint(5, 15)  # of 16 optimizer steps (4 epochs of 4), after
    straight = torchrun(str(tmp_path / "straight"))  # the first epoch's last.pt
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = torchrun(str(tmp_path / "killed"), f"kill=1:{step}")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "final.pt").exists()
    resumed = torchrun(str(tmp_path / "killed"), "resume")
    assert resumed.returncode == 0, f"killed at step {step}: {resumed.stderr[-3000:]}"
    straight_state = load(tmp_path / "straight" / "final.pt")
    difference = max_difference(straight_state, load(tmp_path / "killed" / "final.pt"))
    assert difference == 0.0, f"killed at step {step}"


@pytest.mark.distributed
def test_a_failing_rank_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    result = torchrun(str(tmp_path / "failing"), "fail=1:3")
    assert result.returncode != 0
    assert "rank 1 fails on purpose at step 3" in result.stderr
    assert "Root Cause" in result.stderr


@pytest.mark.parametrize("num_samples", [64, 67, 65])
def test_sharded_batch_order_splits_each_global_batch(num_samples: int) -> None:
    def order(**kwargs: int) -> list[list[int]]:
        sampler = BatchOrder(
            num_samples, 16, shuffle=True, generator=torch.Generator().manual_seed(3), **kwargs
        )
        batches = [key.indices for key in sampler]
        assert len(batches) == len(sampler)
        return batches

    single = order()
    shares = [order(num_replicas=2, rank=rank) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1])
    for index, (first, second) in enumerate(zip(*shares, strict=True)):
        assert len(first) == len(second)
        assert first + second == single[index][: 2 * len(first)]
    dropped = num_samples - sum(len(batch) for share in shares for batch in share)
    assert dropped == num_samples % 16 % 2  # an odd last batch leaves one sample out


def test_sharded_batch_order_needs_a_divisible_global_batch() -> None:
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        BatchOrder(10, 4, shuffle=False, num_replicas=3, rank=0)


def test_global_batch_is_refused_for_per_sample_losses() -> None:
    with pytest.raises(ValueError, match="global_batch gathers the batch of"):
        Distiller(nn.Linear(2, 3), nn.Linear(2, 3), [Term("kd", "hinton", global_batch=True)])


def test_gathering_is_a_no_op_on_one_process() -> None:
    rows = torch.randn(4, 3, requires_grad=True)
    assert gather_rows(rows) is rows and gather_rows_with_grad(rows) is rows


def test_a_distributed_mode_needs_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MASTER_ADDR", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="launch with `torchrun --nproc-per-node N"):
        Parallel.from_environment("ddp", torch.device("cpu"))
    assert not Parallel.from_environment("auto", torch.device("cpu")).enabled
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="'none' but 2 processes were launched"):
        Parallel.from_environment("none", torch.device("cpu"))


def test_rank_zero_keeps_the_run_seed() -> None:
    assert rank_seed(5, 0) == 5
    assert len({rank_seed(5, rank) for rank in range(8)}) == 8
