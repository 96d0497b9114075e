"""Forward + backward speed of the logit losses against ``F.cross_entropy`` and plain autograd.

For each shape ``[N, C]`` (float32, CPU, 2 threads) the variants run interleaved (A B C A B C
...) after a warm-up; the table reports the median of the timed rounds, the ratio to
``F.cross_entropy`` forward + backward on the same shape, and, for the KL losses, the speed-up
over the plain autograd composition

    F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
             reduction="batchmean") * T * T

The first call of each variant (which includes ``torch.compile`` where the kernel policy
compiles) is reported separately. ``dkd_loss`` comes from ``torchkd/losses/dkd.py``; its rows
are skipped with a note if it is missing. Results go to ``benchmarks/results/loss_speed.md``.

Usage::

    .venv/bin/python benchmarks/loss_speed.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses.kl import compile_policy, should_compile
from torchkd.losses.logit import hinton_loss, jsd_loss, kd_loss

SHAPES = ((256, 100), (1024, 1000), (4096, 32000))
TEMPERATURE = 4.0
THREADS = 2
RESULTS = Path(__file__).parent / "results" / "loss_speed.md"

# (shape, loss) -> (kind, limit): kd/CE ratio at most `limit`, composition/kd at least `limit`.
TARGETS = {
    ((1024, 1000), "kd_loss / cross_entropy"): ("max", 2.5),
    ((4096, 32000), "kd_loss / cross_entropy"): ("max", 1.2),
    ((1024, 1000), "autograd KL / kd_loss"): ("min", 2.5),
    ((4096, 32000), "autograd KL / kd_loss"): ("min", 5.0),
}


@dataclass
class Inputs:
    student: Tensor
    teacher: Tensor
    labels: Tensor


def load_dkd() -> Callable[..., Tensor] | None:
    try:
        from torchkd.losses.dkd import dkd_loss
    except ImportError:
        return None
    return dkd_loss


def variants(dkd: Callable[..., Tensor] | None) -> dict[str, Callable[[Inputs], Tensor]]:
    """Each variant maps the inputs to a scalar loss (fresh graph per call)."""
    temperature = TEMPERATURE

    def composition(x: Inputs) -> Tensor:
        student = F.log_softmax(x.student / temperature, dim=-1)
        teacher = F.log_softmax(x.teacher / temperature, dim=-1)
        kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        return kl * temperature * temperature

    table: dict[str, Callable[[Inputs], Tensor]] = {
        "cross_entropy": lambda x: F.cross_entropy(x.student, x.labels),
        "autograd KL": composition,
        "kd_loss": lambda x: kd_loss(x.student, x.teacher, temperature=temperature),
        "jsd_loss": lambda x: jsd_loss(x.student, x.teacher, beta=0.5, temperature=temperature),
        "hinton_loss": lambda x: hinton_loss(
            x.student, x.teacher, x.labels, temperature=temperature, alpha=0.9
        ),
    }
    if dkd is not None:
        table["dkd_loss"] = lambda x: dkd(
            x.student, x.teacher, x.labels, alpha=1.0, beta=8.0, temperature=temperature
        )
    return table


def forward_backward(loss_fn: Callable[[Inputs], Tensor], inputs: Inputs) -> float:
    """Seconds for one forward + backward (gradient w.r.t. the student logits)."""
    inputs.student.grad = None
    start = time.perf_counter()
    loss_fn(inputs).backward()
    return time.perf_counter() - start


def measure_shape(
    shape: tuple[int, int], table: dict[str, Callable[[Inputs], Tensor]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """First-call seconds and median seconds per variant, variants interleaved."""
    generator = torch.Generator().manual_seed(0)
    rows, classes = shape
    inputs = Inputs(
        student=(torch.randn(shape, generator=generator) * 3).requires_grad_(),
        teacher=torch.randn(shape, generator=generator) * 3,
        labels=torch.randint(0, classes, (rows,), generator=generator),
    )
    first = {name: forward_backward(fn, inputs) for name, fn in table.items()}
    for fn in table.values():  # warm-up
        forward_backward(fn, inputs)
    samples: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(rounds):
        for name, fn in table.items():
            samples[name].append(forward_backward(fn, inputs))
    del inputs
    return first, {name: statistics.median(values) for name, values in samples.items()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def verdict(kind: str, limit: float, value: float) -> str:
    if kind == "max":
        return "met" if value <= limit else f"missed by {value / limit - 1:.0%}"
    return "met" if value >= limit else f"missed by {1 - value / limit:.0%}"


def kernel_path(shape: tuple[int, int]) -> str:
    return "compiled" if should_compile(torch.empty(shape)) else "eager"


def render(
    results: dict[tuple[int, int], tuple[dict[str, float], dict[str, float]]],
    command: str,
    dkd_available: bool,
) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Logit loss speed (forward + backward, float32, CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Environment: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores), Python "
        f"{platform.python_version()}, TORCHKD_COMPILE={compile_policy()}, "
        f"1-minute load average at the end {load:.1f} (a shared machine: absolute times drift, "
        "ratios within one run are the comparable numbers).",
        "",
        f"Temperature {TEMPERATURE}; jsd beta 0.5; hinton alpha 0.9; dkd alpha 1, beta 8. "
        "Median of the interleaved rounds; ratio = time / cross_entropy time on the same "
        "shape; speed-up = autograd KL time / loss time.",
        "",
    ]
    if not dkd_available:
        lines += [
            "dkd_loss: not available (torchkd/losses/dkd.py has no dkd_loss); rows skipped.",
            "",
        ]
    lines += [
        "| shape | loss | kernel | first call (ms) | median (ms) | / cross_entropy | "
        "autograd KL speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for shape, (first, median) in results.items():
        baseline, composition = median["cross_entropy"], median["autograd KL"]
        for name, seconds in median.items():
            kernel = kernel_path(shape) if name not in ("cross_entropy", "autograd KL") else "-"
            speedup = (
                f"{composition / seconds:.2f}x"
                if name in ("kd_loss", "jsd_loss", "hinton_loss", "dkd_loss")
                else "-"
            )
            lines.append(
                f"| {shape[0]}x{shape[1]} | {name} | {kernel} | {first[name] * 1e3:.1f} | "
                f"{seconds * 1e3:.2f} | {seconds / baseline:.2f} | {speedup} |"
            )
    lines += ["", "## Targets (kd_loss)", "", "| shape | ratio | target | measured | verdict |"]
    lines.append("|---|---|---|---:|---|")
    for (shape, ratio), (kind, limit) in TARGETS.items():
        if shape not in results:
            continue
        median = results[shape][1]
        if ratio == "kd_loss / cross_entropy":
            value = median["kd_loss"] / median["cross_entropy"]
        else:
            value = median["autograd KL"] / median["kd_loss"]
        bound = f"<= {limit}x" if kind == "max" else f">= {limit}x"
        lines.append(
            f"| {shape[0]}x{shape[1]} | {ratio} | {bound} | {value:.2f}x | "
            f"{verdict(kind, limit, value)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per shape (>= 5)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    dkd = load_dkd()
    table = variants(dkd)
    results = {}
    for shape in SHAPES:
        rounds = args.rounds if shape[0] * shape[1] < 2**24 else max(5, args.rounds - 2)
        results[shape] = measure_shape(shape, table, rounds)
        print(
            f"{shape}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in results[shape][1].items())
        )
    command = " ".join([".venv/bin/python", "benchmarks/loss_speed.py", *sys.argv[1:]])
    markdown = render(results, command, dkd is not None)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
