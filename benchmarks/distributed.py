"""Data-parallel scaling: steps/s and memory for 1 vs N processes on the same global batch.

Each variant is one ``torchrun`` launch of this script in worker mode: a CNN-1D teacher (width
64) distils into a CNN-1D student (width 16) on MNIST-1D-shaped random inputs (``[B, 1, 40]``,
10 classes) with Hinton KD, through torchkd's own pieces (``Distiller``, ``Parallel`` from
:mod:`torchkd.train.distributed`, the sharded batch order). The global batch is the same in
every variant; each of N processes computes ``batch / N`` samples.

Per variant the worker times ``--steps`` optimizer steps after ``--warmup`` steps, twice:
with gradient averaging (the real step) and with it switched off (``no_sync``: the same
compute, no communication). The communication share is ``1 - t_nosync / t_sync``. Peak memory
is each process's peak RSS (``resource.getrusage``), the largest over the processes.
Variants are interleaved (1, N, 1, N, ...) ``--repeats`` times and the table quotes medians
and the ratio to one process.

Usage::

    .venv/bin/python benchmarks/distributed.py                      # CPU, gloo, 1 vs 2
    .venv/bin/python benchmarks/distributed.py --processes 1 2 4 --batch 512 --steps 50
    .venv/bin/python benchmarks/distributed.py --device cuda        # NCCL, one GPU per process

Writes ``benchmarks/results/distributed.md`` (``--out`` to change). Never needed by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

RESULTS = Path(__file__).parent / "results"


def worker(args: argparse.Namespace) -> None:
    """One variant under torchrun: time synced and unsynced steps, rank 0 writes JSON."""
    from torchkd.data.batching import BatchOrder
    from torchkd.distiller import Distiller, Term
    from torchkd.models import create_model
    from torchkd.train.distributed import Parallel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nproc = int(os.environ["WORLD_SIZE"])
    parallel = Parallel.from_environment("ddp" if nproc > 1 else "none", device)
    torch.manual_seed(0)
    student = create_model("cnn1d", width=16)
    teacher = create_model("cnn1d", width=64)
    distiller = Distiller(
        student, teacher, [Term("kd", "hinton", {"alpha": 0.9}, temperature=4.0)]
    ).to(parallel.device)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(args.batch * 8, 1, 40, generator=generator)
    labels = torch.randint(10, (args.batch * 8,), generator=generator)
    order = BatchOrder(
        len(inputs),
        args.batch,
        shuffle=True,
        generator=generator,
        num_replicas=parallel.world_size,
        rank=parallel.rank,
    )
    batches = [
        {
            "inputs": inputs[key.indices].to(parallel.device),
            "labels": labels[key.indices].to(parallel.device),
        }
        for key in order
    ]
    distiller.build(batches[0])
    model = parallel.wrap(distiller)
    optimizer = torch.optim.Adam(distiller.trainable_parameters(), lr=1e-3)

    def timed(sync: bool, steps: int) -> float:
        parallel.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(steps):
            with parallel.sync_gradients(sync):
                model(batches[step % len(batches)]).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        parallel.barrier()
        return time.perf_counter() - start

    timed(True, args.warmup)
    synced = timed(True, args.steps)
    unsynced = timed(False, args.steps) if parallel.enabled else synced  # 1 process: no comms
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    if parallel.enabled:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if parallel.is_main:
        result = {
            "processes": nproc,
            "steps_per_s": args.steps / synced,
            "communication_share": max(0.0, 1.0 - unsynced / synced),
            "peak_rss_mib": float(peak),
        }
        Path(args.result).write_text(json.dumps(result))
    if parallel.enabled:
        dist.destroy_process_group()


def launch(args: argparse.Namespace, nproc: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(29400 + nproc),
            __file__,
            "--worker",
            "--result",
            str(result),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(command, check=True, env=environment)
        return json.loads(result.read_text())


def table(args: argparse.Namespace, runs: dict[int, list[dict[str, float]]]) -> str:
    backend = "NCCL" if args.device == "cuda" else "gloo"
    lines = [
        "# Data-parallel scaling (benchmarks/distributed.py)",
        "",
        f"Command: `.venv/bin/python benchmarks/distributed.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"torch {torch.__version__}, {backend} on {args.device}, {args.threads} thread(s) per "
        f"process, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"CNN-1D width 64 -> width 16, Hinton KD, Adam, global batch {args.batch}, "
        f"{args.steps} timed steps, median of {args.repeats}.",
        "",
        "| processes | steps/s | vs 1 process | communication share | peak RSS per process (MiB) |",
        "|---|---|---|---|---|",
    ]
    base = statistics.median(r["steps_per_s"] for r in runs[min(runs)])
    for nproc, results in runs.items():
        speed = statistics.median(r["steps_per_s"] for r in results)
        share = statistics.median(r["communication_share"] for r in results)
        memory = statistics.median(r["peak_rss_mib"] for r in results)
        lines.append(
            f"| {nproc} | {speed:.1f} | {speed / base:.2f}x | {share:.0%} | {memory:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS / "distributed.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in args.processes}
    for _ in range(args.repeats):  # interleaved: 1, N, 1, N, ...
        for nproc in args.processes:
            runs[nproc].append(launch(args, nproc))
    text = table(args, runs)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
