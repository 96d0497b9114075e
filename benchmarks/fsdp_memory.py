"""FSDP2 per transformer block: the memory each process holds, 1 process vs N.

Each variant is one ``torchrun`` launch of this script in worker mode: a Llama-style teacher
distils into a Llama-style student of the same shape (``--layers`` decoder layers of width
``--width``, vocabulary ``--vocab``, the student's embedding tied to its output projection)
with the fused hidden-state KD loss (``fused_linear_kd``), through torchkd's own wrapping
(:class:`~torchkd.train.distributed.Parallel`). The variants: one process (no wrapper), N
processes with DDP (every process holds everything), N processes with FSDP2 per decoder layer
and ``shard_teacher`` (:mod:`torchkd.train.fsdp`).

After ``--steps`` AdamW steps on random tokens (the global batch split across the processes),
each process counts the bytes it holds, from its local shards (``DTensor.to_local()``) where
FSDP shards: the parameters (student and teacher), the student's gradients (taken before they
are freed) and the optimizer state. Its peak RSS (``resource.getrusage``) is also quoted: it
includes the Python/torch baseline and the models each process builds whole before they are
sharded, and no CPU allocator statistics say how much of it the step itself needed. The
table quotes the largest value over the processes of each variant.

Usage::

    .venv/bin/python benchmarks/fsdp_memory.py                 # CPU, gloo, 1 vs 2
    .venv/bin/python benchmarks/fsdp_memory.py --processes 2 4 --layers 16

Writes ``benchmarks/results/fsdp_memory.md`` (``--out`` to change). Never needed by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

RESULTS = Path(__file__).parent / "results"
MIB = 2.0**20


def local_bytes(tensors: Iterable[Tensor | None]) -> int:
    """Bytes of the tensors this process holds (a DTensor's local shard only)."""
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def llama(args: argparse.Namespace, *, tied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=args.length,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config)


def worker(args: argparse.Namespace) -> None:
    """One variant under torchrun: train ``--steps`` steps, count, rank 0 writes JSON."""
    from torchkd.distiller import Distiller, Term
    from torchkd.train.distributed import Parallel

    torch.set_num_threads(args.threads)
    nproc = int(os.environ["WORLD_SIZE"])
    parallel = Parallel.from_environment(args.mode, torch.device("cpu"), args.mode == "fsdp")
    torch.manual_seed(0)
    student, teacher = llama(args, tied=True), llama(args, tied=False)
    kd = Term("kd", "fused_linear_kd", temperature=2.0, loss_kwargs={"hard_label_weight": 0.5})
    distiller = Distiller(student, teacher, [kd])
    generator = torch.Generator().manual_seed(1)
    share = args.batch // nproc
    tokens = torch.randint(args.vocab, (args.batch, args.length + 1), generator=generator)
    mine = tokens[parallel.rank * share : (parallel.rank + 1) * share]
    batch = {"inputs": {"input_ids": mine[:, :-1]}, "labels": mine[:, 1:]}
    distiller.build(batch)
    model = parallel.wrap(distiller)
    optimizer = torch.optim.AdamW(distiller.trainable_parameters(), lr=1e-4)
    gradients = 0
    for _ in range(args.steps):
        with parallel.sync_gradients(True):
            model(batch).loss.backward()
        gradients = local_bytes(p.grad for p in distiller.trainable_parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    models = list(student.parameters()) + list(teacher.parameters())
    held = {
        "parameters": local_bytes({id(p): p for p in models}.values()),  # tied: counted once
        "gradients": gradients,
        "optimizer": local_bytes(
            value for state in optimizer.state.values() for value in state.values()
        ),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    values = torch.tensor([float(held[key]) for key in held])
    if parallel.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    if parallel.is_main:
        result = dict(zip(held, values.tolist(), strict=True))
        Path(args.result).write_text(json.dumps({"processes": nproc, **result}))
    if parallel.enabled:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: argparse.Namespace, nproc: int, mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        options = ("batch", "steps", "threads", "layers", "width", "vocab", "length")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(free_port()),
            __file__,
            "--worker",
            "--mode",
            mode,
            "--result",
            str(result),
            *(f"--{name}={getattr(args, name)}" for name in options),
        ]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, check=True, env=environment)
        return {"mode": mode, **json.loads(result.read_text())}


def table(args: argparse.Namespace, runs: list[dict[str, float]]) -> str:
    student, teacher = (
        sum(p.numel() for p in llama(args, tied=tied).parameters()) for tied in (True, False)
    )
    lines = [
        "# FSDP2 per transformer block: memory per process (benchmarks/fsdp_memory.py)",
        "",
        f"Command: `.venv/bin/python benchmarks/fsdp_memory.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"torch {torch.__version__}, gloo on cpu, {args.threads} thread(s) per process, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; Llama student "
        f"and teacher of {args.layers} layers, width {args.width}, vocabulary {args.vocab} "
        f"({student / 1e6:.1f} M parameters, embedding tied, and {teacher / 1e6:.1f} M, "
        "float32), "
        f"fused forward KL + CE, AdamW, global batch {args.batch} x {args.length} tokens, "
        f"{args.steps} steps. Bytes held per process (the largest over the processes), MiB.",
        "",
        "| processes | wrapper | parameters (student + teacher) | gradients | optimizer state "
        "| total held | vs 1 process | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def total(run: dict[str, float]) -> float:
        return run["parameters"] + run["gradients"] + run["optimizer"]

    base = total(runs[0])
    for run in runs:
        lines.append(
            f"| {run['processes']:.0f} | {run['mode']} | {run['parameters'] / MIB:.1f} | "
            f"{run['gradients'] / MIB:.1f} | {run['optimizer'] / MIB:.1f} | "
            f"{total(run) / MIB:.1f} | {total(run) / base:.2f}x | {run['peak_rss'] / MIB:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--batch", type=int, default=4, help="the global batch (sequences)")
    parser.add_argument("--length", type=int, default=32, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=16000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "fsdp_memory.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs = [launch(args, 1, "none")]
    for nproc in args.processes:
        runs += [launch(args, nproc, "ddp"), launch(args, nproc, "fsdp")]
    text = table(args, runs)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
