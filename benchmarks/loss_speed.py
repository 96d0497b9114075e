"""Forward + backward speed of the logit losses against ``F.cross_entropy`` and plain autograd.

For each shape ``[N, C]`` (float32, CPU, 2 threads) the variants run interleaved (A B C A B C
...) after a warm-up; the table reports the median of the timed rounds, the ratio to
``F.cross_entropy`` forward + backward on the same shape, and, for the KL losses, the speed-up
over the plain autograd composition

    F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
             reduction="batchmean") * T * T

The first call of each variant (which includes ``torch.compile`` where the kernel policy
compiles) is reported separately; a variant whose first call exceeds ``SLOW_FIRST_CALL`` gets no
timed rounds, which keeps the run within a few minutes. ``kd_loss`` also runs with
``TORCHKD_COMPILE=1`` on the shapes where the default policy keeps it eager. ``dkd_loss`` comes
from ``torchkd/losses/dkd.py``; its rows are skipped with a note if it is missing. The table
and the targets go to ``benchmarks/results/loss_speed.md``.

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

from torchkd.environment import cpu_model
from torchkd.losses import hinton_loss, jsd_loss, kd_loss
from torchkd.losses._compile import COMPILE_ENV, compile_policy, should_compile

SHAPES = ((256, 100), (1024, 1000), (4096, 32000))
TEMPERATURE = 4.0
THREADS = 2
RESULTS = Path(__file__).parent / "results" / "loss_speed.md"
FORCED = "kd_loss [TORCHKD_COMPILE=1]"
ROUNDS = {(256, 100): 31, (1024, 1000): 21, (4096, 32000): 5}  # timed rounds per shape
SLOW_FIRST_CALL = 20.0  # seconds: a loss whose first call takes longer is not timed further
NEVER_SKIPPED = ("cross_entropy", "autograd KL", "kd_loss")  # the targets need them
KL_LOSSES = ("kd_loss", FORCED, "jsd_loss", "hinton_loss", "dkd_loss")

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


def forced_compile(loss_fn: Callable[[Inputs], Tensor]) -> Callable[[Inputs], Tensor]:
    """``loss_fn`` with ``TORCHKD_COMPILE=1`` while it runs (the policy is read per call)."""

    def call(inputs: Inputs) -> Tensor:
        previous = os.environ.get(COMPILE_ENV)
        os.environ[COMPILE_ENV] = "1"
        try:
            return loss_fn(inputs)
        finally:
            if previous is None:
                del os.environ[COMPILE_ENV]
            else:
                os.environ[COMPILE_ENV] = previous

    return call


def variants(
    dkd: Callable[..., Tensor] | None, shape: tuple[int, int]
) -> dict[str, Callable[[Inputs], Tensor]]:
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
    if kernel_path(shape) == "eager":
        table[FORCED] = forced_compile(table["kd_loss"])
    return table


def forward_backward(loss_fn: Callable[[Inputs], Tensor], inputs: Inputs) -> float:
    """Seconds for one forward + backward (gradient w.r.t. the student logits)."""
    inputs.student.grad = None
    start = time.perf_counter()
    loss_fn(inputs).backward()
    return time.perf_counter() - start


def measure_shape(
    shape: tuple[int, int], table: dict[str, Callable[[Inputs], Tensor]], rounds: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """First-call seconds and the timed rounds' seconds per variant (interleaved).

    A variant whose first call takes longer than ``SLOW_FIRST_CALL`` gets no timed rounds (it
    would dominate the run); its first call is still reported.
    """
    generator = torch.Generator().manual_seed(0)
    rows, classes = shape
    inputs = Inputs(
        student=(torch.randn(shape, generator=generator) * 3).requires_grad_(),
        teacher=torch.randn(shape, generator=generator) * 3,
        labels=torch.randint(0, classes, (rows,), generator=generator),
    )
    first = {name: forward_backward(fn, inputs) for name, fn in table.items()}
    timed = {
        name: fn
        for name, fn in table.items()
        if first[name] <= SLOW_FIRST_CALL or name in NEVER_SKIPPED
    }
    for fn in timed.values():  # warm-up
        forward_backward(fn, inputs)
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, fn in timed.items():
            samples[name].append(forward_backward(fn, inputs))
    return first, samples


def verdict(kind: str, limit: float, value: float) -> str:
    if kind == "max":
        return "met" if value <= limit else f"missed by {value / limit - 1:.0%}"
    return "met" if value >= limit else f"missed by {1 - value / limit:.0%}"


def kernel_path(shape: tuple[int, int]) -> str:
    return "compiled" if should_compile(torch.empty(shape)) else "eager"


def render(
    results: dict[tuple[int, int], tuple[dict[str, float], dict[str, list[float]]]],
    command: str,
    dkd_available: bool,
) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rounds = ", ".join(f"{r} at {n}x{c}" for (n, c), r in ROUNDS.items())
    lines = [
        "# Logit loss speed (forward + backward, float32, CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"Environment: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU {cpu_model()} ({os.cpu_count()} logical cores), Python "
        f"{platform.python_version()}, TORCHKD_COMPILE={compile_policy()}, 1-minute load "
        f"average at the end {load:.1f} (a shared machine: absolute times drift, ratios within "
        "one run are the comparable numbers).",
        "",
        f"Temperature {TEMPERATURE}; jsd beta 0.5; hinton alpha 0.9; dkd alpha 1, beta 8. "
        f"Median (and minimum) of interleaved rounds after a warm-up ({rounds}); ratio = median "
        "/ cross_entropy median on the same shape; speed-up = autograd KL median / loss median. "
        f"`kernel` is what the default policy picks; `{FORCED}` forces the compiled kernel "
        "where the default is eager. First call = the very first forward + backward of that "
        "variant on that shape; each divergence's kernel compiles once per process (dynamic "
        "shapes), so the compile cost shows in the first compiled call only (kd: the 256x100 "
        f"`{FORCED}` row; jsd: 4096x32000). A loss whose first call takes over "
        f"{SLOW_FIRST_CALL:.0f} s gets no timed rounds (its median shows as -).",
        "",
    ]
    if not dkd_available:
        lines += [
            "dkd_loss: not available (no dkd_loss in torchkd/losses/dkd.py); rows skipped.",
            "",
        ]
    lines += [
        "| shape | loss | kernel | first call (ms) | median (ms) | min (ms) | / cross_entropy | "
        "autograd KL speed-up |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    medians = {
        shape: {name: statistics.median(values) for name, values in samples.items()}
        for shape, (_, samples) in results.items()
    }
    for shape, (first, samples) in results.items():
        median = medians[shape]
        for name, first_seconds in first.items():
            kernel = "-"
            if name in KL_LOSSES and name != "dkd_loss":
                kernel = "compiled" if name == FORCED else kernel_path(shape)
            cells = ["-", "-", "-", "-"]
            if name in median:
                seconds = median[name]
                cells = [
                    f"{seconds * 1e3:.2f}",
                    f"{min(samples[name]) * 1e3:.2f}",
                    f"{seconds / median['cross_entropy']:.2f}",
                    f"{median['autograd KL'] / seconds:.2f}x" if name in KL_LOSSES else "-",
                ]
            lines.append(
                f"| {shape[0]}x{shape[1]} | {name} | {kernel} | {first_seconds * 1e3:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    lines += [
        "",
        "## Targets (kd_loss; default policy and forced compilation)",
        "",
        "Judged on the medians, as specified; the same ratio of the minima (the rounds least "
        "disturbed by other processes on a shared machine) is shown beside it.",
        "",
        "| shape | ratio | target | measured (medians) | verdict | measured (minima) | verdict |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for (shape, ratio), (kind, limit) in TARGETS.items():
        samples = results[shape][1]
        for name in ("kd_loss", FORCED):
            if name not in samples:
                continue
            cells = []
            for statistic in (statistics.median, min):
                times = {key: statistic(values) for key, values in samples.items()}
                if ratio.startswith("kd_loss"):
                    value = times[name] / times["cross_entropy"]
                else:
                    value = times["autograd KL"] / times[name]
                cells.append(f"{value:.2f}x | {verdict(kind, limit, value)}")
            bound = f"<= {limit}x" if kind == "max" else f">= {limit}x"
            lines.append(
                f"| {shape[0]}x{shape[1]} | {ratio.replace('kd_loss', name)} | {bound} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    dkd = load_dkd()
    results = {}
    for shape in SHAPES:
        results[shape] = measure_shape(shape, variants(dkd, shape), ROUNDS[shape])
        timings = ", ".join(
            f"{name} {statistics.median(values) * 1e3:.2f} ms"
            for name, values in results[shape][1].items()
        )
        print(f"{shape}: {timings}", flush=True)
    command = " ".join([".venv/bin/python", "benchmarks/loss_speed.py", *sys.argv[1:]])
    markdown = render(results, command, dkd is not None)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
