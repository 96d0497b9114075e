"""Tiny runs shared by the distributed tests: built the same way on one process and on
several (spawned with gloo, or under torchrun), so their final students can be compared."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.distributed.elastic.multiprocessing.errors import record

from torchkd.config import TrainConfig
from torchkd.data import TensorDictDataset
from torchkd.data.batching import batch_loader
from torchkd.distiller import Distiller, Term
from torchkd.lm import next_token_labels
from torchkd.losses import fused_linear_kd_loss
from torchkd.losses.distributed import data_parallel_num_items
from torchkd.train import fit
from torchkd.train.distributed import end_process

NUM_SAMPLES, NUM_FEATURES, NUM_CLASSES, NUM_NEGATIVES = 64, 8, 3, 6


class ContrastTable(TensorDictDataset):
    """Adds a fixed ``contrast_index`` row per sample, so CRD draws no random negatives."""

    def __init__(self, inputs: Tensor, labels: Tensor) -> None:
        super().__init__(inputs, labels)
        generator = torch.Generator().manual_seed(5)
        negatives = torch.randint(len(inputs), (len(inputs), NUM_NEGATIVES), generator=generator)
        self.contrast = torch.cat([torch.arange(len(inputs))[:, None], negatives], dim=1)

    def __getitem__(self, position: Any) -> dict[str, Tensor]:
        return {**super().__getitem__(position), "contrast_index": self.contrast[position]}


def mlp(hidden: int) -> nn.Module:
    """A float64 MLP: the runs compared differ in summation order only, whose float64 rounding
    (``test_distributed.TRAINED``) a few steps of training cannot grow to a visible error."""
    layers = nn.Linear(NUM_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, NUM_CLASSES)
    return nn.Sequential(*layers).double()


def make_data(num_samples: int, seed: int, contrast: bool = False) -> TensorDictDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_samples, NUM_FEATURES, generator=generator, dtype=torch.float64)
    labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
    return (ContrastTable if contrast else TensorDictDataset)(inputs, labels)


TERMS: dict[str, list[Term]] = {
    "logit": [Term("kd", "hinton", {"alpha": 0.7}, temperature="learned")],
    "feature": [
        Term("ce", "ce"),
        Term("hint", "hint", student="0", teacher="0", weight=0.5, adapter="linear"),
    ],
    "relation": [
        Term("ce", "ce"),
        Term("sp", "sp", student="0", teacher="0", weight=10.0, global_batch=True),
        Term("rkd", "rkd", student="0", teacher="0", global_batch=True),
    ],
    "crd": [
        Term("ce", "ce"),
        Term(
            "crd",
            "crd",
            {"feat_dim": 4, "num_negatives": NUM_NEGATIVES, "num_samples": NUM_SAMPLES},
            student="1",
            teacher="1",
            weight="auto",
        ),
    ],
    "seed": [  # 16 rows a step into 24 slots: the queue wraps around mid-batch
        Term("ce", "ce"),
        Term(
            "seed",
            "seed",
            {"queue_size": 24, "student_temperature": 0.5, "teacher_temperature": 0.1},
            student="1",
            teacher="1",
        ),
    ],
}


KILL_HOOKS: list[Callable[[nn.Module], None]] = []


def run(
    case: str,
    run_dir: Path,
    *,
    distributed: str = "auto",
    epochs: int = 2,
    batch_size: int = 16,
    resume: bool = False,
    **train: Any,
) -> dict[str, Tensor]:
    """Train ``case`` (global batch ``batch_size``) and return the final student weights."""
    torch.manual_seed(0)
    student, teacher = mlp(6), mlp(10)
    for hook in KILL_HOOKS:
        hook(student)
    distiller = Distiller(student, teacher, TERMS[case])
    train_loader = batch_loader(
        make_data(NUM_SAMPLES, 1, contrast=case == "crd"),
        batch_size,
        shuffle=True,
        generator=torch.Generator(),
    )
    val_loader = batch_loader(make_data(16, 2, contrast=case == "crd"), 8, shuffle=False)
    config = TrainConfig(
        epochs=epochs,
        device="cpu",
        progress=False,
        distributed=distributed,
        log_every_steps=1,
        optimizer={"name": "sgd", "lr": 0.1},
        **train,
    )
    fit(distiller, train_loader, val_loader, config, run_dir, resume=resume)
    return trained_state(distiller)


def trained_state(distiller: Distiller) -> dict[str, Tensor]:
    """The student's and the extras' parameters and buffers (CRD banks, "auto" weights)."""
    state = distiller.state_dict()
    return {k: _full(v).detach().clone() for k, v in state.items() if not k.startswith("teachers")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TORCHRUN_TIMEOUT_S = 120


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node NPROC ARGS`` on a free port, one torch thread per process,
    this checkout and its tests/ (the ``train`` test package) first on the path; its output
    captured, its exit code not checked."""
    root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        *args,
    ]
    path = os.pathsep.join([str(root), str(root / "tests")])
    environment = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=TORCHRUN_TIMEOUT_S,
        check=False,
    )


def _worker(rank: int, world: int, port: int, target: Callable[..., Any], args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    target(*args)  # an exception goes to mp.spawn, which reports it
    end_process(0)


def spawn(target: Callable[..., Any], *args: Any, world: int = 2) -> None:
    """Run ``target(*args)`` on ``world`` gloo processes (raises if any of them fails)."""
    mp.spawn(_worker, args=(world, free_port(), target, args), nprocs=world)


VOCAB, LENGTH = 11, 6


class TinyLM(nn.Module):
    """Embedding -> one Transformer encoder layer -> token logits ``[B, L, V]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.block = nn.TransformerEncoderLayer(
            width, nhead=2, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.block(self.embed(tokens)))


class TokenData:
    """Random token sequences; ``labels`` are the next tokens. Indexable by a list of rows."""

    def __init__(self, num_samples: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(VOCAB, (num_samples, LENGTH + 1), generator=generator)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, rows: Any) -> dict[str, Tensor]:
        tokens = self.tokens[rows]
        return {"inputs": tokens[..., :-1], "labels": tokens[..., 1:], "index": torch.tensor(rows)}


def run_lm(
    run_dir: Path,
    *,
    distributed: str,
    epochs: int = 2,
    resume: bool = False,
    batch_size: int = 8,
    **train: Any,
) -> dict[str, Tensor]:
    """Distil a tiny LM pair (token KD + CE) and return the final student weights (full)."""
    torch.manual_seed(0)
    student, teacher = TinyLM(8).double(), TinyLM(16).double()  # float64: as mlp's
    terms = [Term("kd", "kd", temperature=2.0), Term("ce", "ce", weight=0.5)]
    distiller = Distiller(student, teacher, terms)
    train_loader = batch_loader(
        TokenData(32, 3), batch_size, shuffle=True, generator=torch.Generator()
    )
    val_loader = batch_loader(TokenData(8, 4), 8, shuffle=False)
    config = TrainConfig(
        epochs=epochs,
        device="cpu",
        progress=False,
        distributed=distributed,
        log_every_steps=1,
        optimizer={"name": "adamw", "lr": 0.01},
        **train,
    )
    fit(distiller, train_loader, val_loader, config, run_dir, resume=resume)
    return trained_state(distiller)


class _Body(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return torch.tanh(self.mix(self.embed(input_ids)))


class PartsLM(nn.Module):
    """A causal LM reduced to a body and an output layer (what the fused terms read)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = _Body(width)
        self.head = nn.Linear(width, VOCAB, bias=False)

    def get_decoder(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head(self.body(input_ids))


class UnevenTokens:
    """8 right-padded sequences with 1 to LENGTH valid labels each (spec format)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(9)
        self.input_ids = torch.randint(VOCAB, (8, LENGTH), generator=generator)
        lengths = torch.tensor([6, 1, 5, 2, 6, 3, 1, 4])
        self.mask = (torch.arange(LENGTH) < lengths[:, None]).long()
        self.labels = next_token_labels(self.input_ids, self.mask)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, rows: Any) -> dict[str, Any]:
        inputs = {"input_ids": self.input_ids[rows], "attention_mask": self.mask[rows]}
        return {"inputs": inputs, "labels": self.labels[rows], "index": torch.tensor(rows)}


def fused_distiller() -> Distiller:
    torch.manual_seed(0)
    student, teacher = PartsLM(6).double(), PartsLM(8).double()
    kd = Term("kd", "fused_linear_kd", temperature=2.0, loss_kwargs={"hard_label_weight": 0.5})
    return Distiller(student, teacher, [kd])


def fused_whole_batch_step() -> dict[str, Tensor]:
    """The student after one SGD step (lr 1) on the gradient of the 8 sequences as one batch."""
    distiller = fused_distiller()
    data = UnevenTokens()
    batch = data[list(range(len(data)))]
    distiller.build(batch)
    distiller(batch).loss.backward()
    with torch.no_grad():
        for parameter in distiller.student.parameters():
            parameter -= parameter.grad
    return trained_state(distiller)


def run_fused(run_dir: Path, distributed: str) -> dict[str, Tensor]:
    """One optimizer step over the 8 sequences: 2 micro-batches of a global 4 (2 per rank)."""
    distiller = fused_distiller()
    train_loader = batch_loader(UnevenTokens(), 4, shuffle=True, generator=torch.Generator())
    config = TrainConfig(
        epochs=1,
        device="cpu",
        progress=False,
        distributed=distributed,
        optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0},
        grad_accum_steps=2,
    )
    fit(distiller, train_loader, batch_loader(UnevenTokens(), 4, shuffle=False), config, run_dir)
    return trained_state(distiller)


def _full(value: Tensor) -> Tensor:
    full = getattr(value, "full_tensor", None)
    return full() if callable(full) else value


def _kill_at(student: nn.Module, call: int) -> None:
    """SIGKILL this process at the student's ``call``-th training forward."""
    calls = [0]

    def hook(module: nn.Module, args: Any) -> None:
        if module.training:
            calls[0] += 1
            if calls[0] == call:
                os.kill(os.getpid(), signal.SIGKILL)

    student.register_forward_pre_hook(hook)


def _fail_at(student: nn.Module, call: int) -> None:
    """Raise a ValueError at the student's ``call``-th training forward."""
    calls = [0]

    def hook(module: nn.Module, args: Any) -> None:
        if module.training:
            calls[0] += 1
            if calls[0] == call:
                raise ValueError(f"rank {os.environ['RANK']} fails on purpose at step {call}")

    student.register_forward_pre_hook(hook)


@record
def main(argv: list[str]) -> None:
    """Under torchrun: ``RUN_DIR [resume] [kill=RANK:STEP] [fail=RANK:STEP]``: the "logit"
    case, 4 epochs, the final state saved by rank 0 as ``RUN_DIR/final.pt``."""
    run_dir = Path(argv[0])
    options = dict(arg.partition("=")[::2] for arg in argv[1:])
    for option, stop in (("kill", _kill_at), ("fail", _fail_at)):
        if option in options:
            rank, step = map(int, options[option].split(":"))
            if int(os.environ["RANK"]) == rank:
                KILL_HOOKS.append(lambda student, stop=stop, step=step: stop(student, step))
    state = run("logit", run_dir, epochs=4, resume="resume" in options)
    if dist.get_rank() == 0:
        torch.save(state, run_dir / "final.pt")
    end_process(0)


if __name__ == "__main__":
    main(sys.argv[1:])


def token_normalization(out_dir: Path) -> None:
    """Each rank holds a share with a different number of valid tokens; normalized by
    :func:`data_parallel_num_items`, the averaged gradient equals one process's over the whole
    batch. Rank 0 saves the largest difference as ``token-normalization.pt``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(7)
    rows, hidden, vocab = 10, 6, 13
    student = torch.randn(world * rows, hidden, generator=generator, dtype=torch.float64)
    teacher = torch.randn(world * rows, 8, generator=generator, dtype=torch.float64)
    student_weight = torch.randn(vocab, hidden, generator=generator, dtype=torch.float64)
    teacher_weight = torch.randn(vocab, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(vocab, (world * rows,), generator=generator)
    labels[:3] = -100  # rank 0 keeps 7 valid tokens
    labels[rows : rows + 8] = -100  # rank 1 keeps 2

    def gradient(share: slice, num_items: Tensor | None) -> Tensor:
        weight = student_weight.clone().requires_grad_(True)
        fused_linear_kd_loss(
            student[share],
            weight,
            teacher[share],
            teacher_weight,
            labels[share],
            hard_label_weight=0.5,
            num_items_in_batch=num_items,
        ).backward()
        return weight.grad

    whole = gradient(slice(None), None)
    share = slice(rank * rows, (rank + 1) * rows)
    num_items = data_parallel_num_items((labels[share] != -100).sum())
    averaged = gradient(share, num_items)
    dist.all_reduce(averaged)
    averaged /= world
    local_mean = gradient(share, None)  # each rank's own count: not the whole batch's gradient
    dist.all_reduce(local_mean)
    local_mean /= world
    if rank == 0:
        differences = {
            "global": float((averaged - whole).abs().max()),
            "local": float((local_mean - whole).abs().max()),
        }
        torch.save(differences, out_dir / "token-normalization.pt")


def all_cases(out: str) -> None:
    """Every spawned case of ``test_distributed.py`` in one 2-process session (starting the
    processes costs more than the runs): each rank saves each final state as
    ``<name>.rank<R>.pt``."""
    out_dir, rank = Path(out), dist.get_rank()

    def save(name: str, state: dict[str, Tensor]) -> None:
        torch.save(state, out_dir / f"{name}.rank{rank}.pt")

    token_normalization(out_dir)
    for case in TERMS:
        save(case, run(case, out_dir / case))
    save("accum", run("logit", out_dir / "accum", batch_size=8, grad_accum_steps=2))
    save("crd-fsdp", run("crd", out_dir / "crd-fsdp", distributed="fsdp"))
    save("lm-ddp", run_lm(out_dir / "lm-ddp", distributed="ddp"))
    save("fused-ddp-accum", run_fused(out_dir / "fused-ddp-accum", distributed="ddp"))
    for mode in ("ddp", "fsdp"):
        accumulated = run_lm(
            out_dir / f"lm-{mode}-accum", distributed=mode, batch_size=4, grad_accum_steps=2
        )
        save(f"lm-{mode}-accum", accumulated)
    save("lm-fsdp", run_lm(out_dir / "lm-fsdp", distributed="fsdp", shard_teacher=True))
    run_lm(out_dir / "lm-fsdp-resumed", distributed="fsdp", epochs=1)
    save("lm-fsdp-resumed", run_lm(out_dir / "lm-fsdp-resumed", distributed="fsdp", resume=True))
    from .fsdp_cases import fsdp_cases  # imports this module

    fsdp_cases(out_dir, rank)
