"""DistillationTrainer on 2 processes (torchrun, gloo, DDP through accelerate) equals one
process on the same global batch; resuming is exact; the teacher stays outside DDP.

The 2-process runs are one ``torchrun`` session (``transformers_cases.main``); the one-process
run is made here. Select them with ``-m distributed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from filelock import FileLock
from tolerances import FLOAT64_EPS, float32_tolerance
from torch import Tensor

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from torchkd.integrations.transformers_parallel import refuse_unsupported_parallelism

from . import transformers_cases as cases

# The compared runs are float64 with the same micro-batches (2 sequences each): the 2-process
# step sums its 4 micro-batch gradients as (g0 + g2) + (g1 + g3) (accumulation, then DDP's
# all-reduce), the one-process step as ((g0 + g1) + g2) + g3; the token divisors are the same
# (N / 4), the other scalings powers of 2 (exact). So a step's update differs by a few
# roundings (3 additions, the clipping factor: n ≤ 4 per step) of gradient entries ≤ 1 (clipped
# to norm 1) times the learning rate 0.5 ≤ 1; each later step amplifies an earlier difference by
# at most 1 + ηL, and over the 4 steps 10³ allows (1 + ηL)⁴ up to 10³ (ηL ≤ 4.6). Far below the
# ≥ 1e-4 of a run counting each process's tokens alone (test_counting_each_process_alone_...).
TRAINED = 1e3 * float32_tolerance(cases.STEPS * 4, 1.0, FLOAT64_EPS)


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def load(path: Path) -> dict[str, Tensor]:
    return torch.load(path, weights_only=True)


def facts(out: Path, rank: int) -> dict:
    return json.loads((out / f"facts.rank{rank}.json").read_text())


def run_two_processes(out: Path) -> None:
    result = cases.torchrun_cases(out)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The results of the one torchrun session; under xdist the workers share it (the first
    to arrive runs it, the others wait for it)."""
    if worker_id == "master":
        out = tmp_path_factory.mktemp("hf-ddp")
        run_two_processes(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / "hf-ddp-shared"  # this run's, shared
    with FileLock(f"{out}.lock"):
        if not (out / "done").is_file():
            out.mkdir(exist_ok=True)
            run_two_processes(out)
            (out / "done").touch()
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Tensor], list, list]:
    """The same global batch (8 sequences a step) on one process: the same micro-batches of 2,
    4 accumulated per step (per-batch means, the hint's, are averaged over micro-batches)."""
    out = tmp_path_factory.mktemp("hf-one")
    trainer, recorder = cases.train(out, per_device=cases.PER_DEVICE, accumulation=4)
    return cases.trained_state(trainer), cases.training_logs(trainer), recorder.tokens


@pytest.mark.distributed
def test_two_processes_equal_one_on_the_same_global_batch(two_processes: Path, one_process):
    """Student, adapter and "auto" weight after 4 steps (2 ranks x 2 micro-batches of 2) ==
    one process accumulating the same 4 micro-batches; the ranks hold uneven token counts."""
    single, _, single_tokens = one_process
    rank0, rank1 = (load(two_processes / f"straight.rank{r}.pt") for r in (0, 1))
    difference = max_difference(single, rank0)
    print(f"max |Δweight|, 2 processes vs 1: {difference:.2g} (bound {TRAINED:.2g})")  # -rP
    assert difference < TRAINED, (difference, TRAINED)
    assert max_difference(rank0, rank1) == 0.0  # DDP keeps every rank identical, extras too
    assert any(key.startswith("extras.hint.adapters") for key in rank0)
    assert "extras.hint.weight.log_variance" in rank0
    # rank r takes micro-batches r, r + 2, ... of the one-process order (the same sequences)
    tokens = [facts(two_processes, r)["tokens"] for r in (0, 1)]
    assert sorted(tokens[0] + tokens[1]) == sorted(single_tokens)
    per_step = [[sum(t[i : i + 2]) for i in range(0, len(t), 2)] for t in tokens]
    assert any(a != b for a, b in zip(*per_step, strict=True)), per_step  # uneven per rank


@pytest.mark.distributed
def test_logged_loss_and_terms_equal_one_process(two_processes: Path, one_process):
    _, single_logs, _ = one_process
    logs = facts(two_processes, 0)["logs"]
    assert [log["step"] for log in logs] == list(range(1, cases.STEPS + 1))
    for log, expected in zip(logs, single_logs, strict=True):
        # Trainer sums the loss in float32: a cast and 4 additions, each within 2^-24 relative
        assert log["loss"] == pytest.approx(expected["loss"], rel=5 * 2**-24)
        for name in ("terms/token_kd", "terms/hint"):  # float64 throughout
            assert log[name] == pytest.approx(expected[name], rel=1e-9), name


@pytest.mark.distributed
def test_counting_each_process_alone_is_not_the_global_batch(two_processes: Path, one_process):
    """With average_tokens_across_devices=False each process divides by its own tokens: the
    processes' means are averaged, a different loss (what TRAINED is far below)."""
    single, _, _ = one_process
    difference = max_difference(single, load(two_processes / "local.rank0.pt"))
    print(f"max |Δweight|, each process's own token count vs 1 process: {difference:.2g}")
    assert difference > 1e-4


@pytest.mark.distributed
def test_resume_on_two_processes_is_exact(two_processes: Path) -> None:
    """Steps 3-4 resumed from checkpoint-2 (student, extras, optimizer, each rank's RNG)."""
    straight, resumed = (
        load(two_processes / f"{name}.rank0.pt") for name in ("straight", "resumed")
    )
    assert max_difference(straight, resumed) == 0.0
    checkpoint = two_processes / "straight" / f"checkpoint-{cases.SAVE_STEPS}"
    assert (checkpoint / "torchkd_extras.safetensors").is_file()
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


@pytest.mark.distributed
def test_teacher_is_frozen_and_not_wrapped(two_processes: Path) -> None:
    """DDP wraps the student and the extras (what the optimizer holds), not the teacher;
    trainer.model stays the student (what is saved)."""
    for rank in (0, 1):
        wrapping = facts(two_processes, rank)["wrapping"]
        assert wrapping == {
            "wrapper": "DistributedDataParallel",
            "wraps_trained_part": True,
            "model_is_student": True,
            "teacher_in_ddp": False,
            "ddp_is_trained": True,
            "optimizer_is_trained": True,
            "teacher_requires_grad": False,
            "teacher_grads": 0,
            "teacher_training": False,
            "extras": [
                "hint.adapters.0.bias",
                "hint.adapters.0.weight",
                "hint.weight.log_variance",
            ],
        }


def stub(**settings) -> SimpleNamespace:
    """What refuse_unsupported_parallelism reads of a Trainer (one process by default)."""
    args = SimpleNamespace(n_gpu=settings.pop("n_gpu", 1), fsdp=settings.pop("fsdp", ""))
    sizes = {name: settings.pop(name, 1) for name in ("tp", "cp", "sp")}
    return SimpleNamespace(
        args=args,
        is_deepspeed_enabled=settings.pop("deepspeed", False),
        is_fsdp_enabled=settings.pop("fsdp_enabled", False),
        get_tp_size=lambda: sizes["tp"],
        get_cp_size=lambda: sizes["cp"],
        get_sp_size=lambda: sizes["sp"],
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_gpu": 2}, r"nn.DataParallel \(n_gpu=2"),
        ({"deepspeed": True}, "DeepSpeed"),
        ({"fsdp": "full_shard"}, "does not run under FSDP"),
        ({"fsdp_enabled": True}, "train.distributed=fsdp"),
        ({"sp": 2}, "sequence=2"),
    ],
)
def test_unsupported_parallelism_is_refused_by_name(settings: dict, message: str) -> None:
    refuse_unsupported_parallelism(stub())  # one process, or DDP: nothing to refuse
    with pytest.raises(ValueError, match=message):
        refuse_unsupported_parallelism(stub(**settings))
