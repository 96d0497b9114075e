"""Engine overhead: a training step through ``Distiller`` + ``fit`` vs a hand-written loop.

Both variants do the same work on the same batches: the teacher's forward under
``torch.no_grad()``, the student's forward and backward, the same Hinton KD loss
(``0.9 * kd_loss(T=4) + 0.1 * ce_loss``, from :mod:`torchkd.losses`), an Adam step and
``zero_grad(set_to_none=True)``. The engine adds what it does on every step: progress for
schedules, the learning-rate schedule, gradient-norm and finiteness checks, random-state
snapshots for exact resumption, Ctrl-C deferral, the progress bar and, every
``log_every_steps``, a JSONL record and TensorBoard scalars.

Batches are collated once, before timing, and served to both variants by the same kind of
``DataLoader`` (``batch_size=None``, shuffled), so data loading costs the same in both and is
nearly free. A call to :func:`~torchkd.train.fit` also has per-run costs that do not grow with
the number of steps (building the optimizer, one validation pass, two checkpoint writes, the
TensorBoard writer); to leave them out, the per-step time of each variant is the slope
``(t(N) - t(N_short)) / (N - N_short)`` of two runs of different lengths. Variants are
interleaved (engine, hand, engine, hand, ...) after a warm-up, and the table quotes the median
over repetitions.

Usage::

    .venv/bin/python benchmarks/engine_overhead.py    # writes results/engine_overhead.md
    .venv/bin/python benchmarks/engine_overhead.py --repeats 7 --steps 400 --threads 1
    .venv/bin/python benchmarks/engine_overhead.py --profile --pairs small    # where time goes
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from torchkd.config import OptimizerConfig, TrainConfig
from torchkd.data import load_mnist1d
from torchkd.distiller import Distiller, Term
from torchkd.environment import environment
from torchkd.losses import ce_loss, kd_loss
from torchkd.models import create_model
from torchkd.train import fit

RESULTS = Path(__file__).parent / "results" / "engine_overhead.md"
TEMPERATURE, ALPHA, LR = 4.0, 0.9, 1e-3
TARGET_OVERHEAD = 0.05


@dataclass(frozen=True)
class Pair:
    """A teacher/student pair of :class:`~torchkd.models.CNN1D` widths and a batch size."""

    name: str
    teacher_width: int
    student_width: int
    batch_size: int


PAIRS = (
    Pair("small", teacher_width=64, student_width=6, batch_size=128),
    Pair("wide", teacher_width=256, student_width=64, batch_size=256),
)


class _Batches(torch.utils.data.Dataset):
    """Pre-collated dict batches (one dataset item = one batch)."""

    def __init__(self, batches: list[dict[str, Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        return self.batches[position]


def make_loader(batch_size: int, num_batches: int, seed: int = 0) -> DataLoader:
    """``num_batches`` MNIST-1D training batches (cycled as needed), served shuffled."""
    train = load_mnist1d("train")
    rows = torch.arange(num_batches * batch_size) % len(train)
    batches = [
        {
            "inputs": train.inputs[chunk],
            "labels": train.labels[chunk],
            "index": chunk,
        }
        for chunk in rows.split(batch_size)
    ]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(_Batches(batches), batch_size=None, shuffle=True, generator=generator)


def make_models(pair: Pair, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = create_model("cnn1d", width=pair.teacher_width)
    student = create_model("cnn1d", width=pair.student_width)
    return teacher, student


def run_engine(pair: Pair, loader: DataLoader, val_batch: list[dict[str, Tensor]]) -> float:
    """Seconds of one ``fit`` call over one epoch of ``loader`` (report and progress off)."""
    teacher, student = make_models(pair)
    terms = [
        Term("kd", "kd", loss_kwargs={"temperature": TEMPERATURE}, weight=ALPHA),
        Term("ce", "ce", weight=1 - ALPHA),
    ]
    distiller = Distiller(student, teacher, terms)
    config = TrainConfig(
        epochs=1, optimizer=OptimizerConfig(name="adam", lr=LR), progress=False, device="cpu"
    )
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        fit(distiller, loader, val_batch, config, run_dir)
        return time.perf_counter() - started


def run_hand(pair: Pair, loader: DataLoader, val_batch: list[dict[str, Tensor]]) -> float:
    """Seconds of the same training written by hand (no validation, no checkpoints)."""
    teacher, student = make_models(pair)
    teacher.eval().requires_grad_(False)
    student.train()
    started = time.perf_counter()
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    for batch in loader:
        with torch.no_grad():
            teacher_logits = teacher(batch["inputs"])
        student_logits = student(batch["inputs"])
        loss = ALPHA * kd_loss(student_logits, teacher_logits, temperature=TEMPERATURE) + (
            1 - ALPHA
        ) * ce_loss(student_logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


Variant = Callable[[Pair, DataLoader, list[dict[str, Tensor]]], float]
VARIANTS: dict[str, Variant] = {"engine": run_engine, "hand": run_hand}


def per_step_times(
    pair: Pair, steps: int, short_steps: int, repeats: int
) -> dict[str, list[float]]:
    """Per-step seconds of each variant, ``repeats`` times, interleaved, after a warm-up."""
    long_loader = make_loader(pair.batch_size, steps)
    short_loader = make_loader(pair.batch_size, short_steps)
    val_batch = [next(iter(make_loader(pair.batch_size, 1)))]
    for run in VARIANTS.values():  # warm-up: imports, allocator, first-call paths
        run(pair, short_loader, val_batch)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(repeats):
        for name, run in VARIANTS.items():
            long_seconds = run(pair, long_loader, val_batch)
            short_seconds = run(pair, short_loader, val_batch)
            times[name].append((long_seconds - short_seconds) / (steps - short_steps))
    return times


ENGINE_FILES = ("torchkd/train/", "torchkd/distiller.py", "torchkd/taps.py")
# Engine functions whose time is mostly the models' and losses' own work (shown separately).
CONTAINERS = {
    "fit",
    "_run_epoch",
    "train_epoch",
    "_accumulate",
    "_update",
    "forward",
    "_capture",
    "_call_tapped",
    "_term_value",
    "_call_impl",
    "_wrapped_call_impl",
}
# Containers minus the work both variants do inside them: (row label, container, shared work).
RESIDUALS = (
    (
        "Distiller.forward minus model forwards and losses",
        ("distiller.py", "forward"),
        {
            ("models/simple.py", "forward"),
            ("losses/logit.py", "kd_loss"),
            ("losses/ce.py", "ce_loss"),
        },
    ),
    (
        "trainer _accumulate minus batch fetch, Distiller.forward, backward",
        ("train/loop.py", "_accumulate"),
        {
            ("torch/utils/data/dataloader.py", "__next__"),
            ("distiller.py", "forward"),
            ("torch/_tensor.py", "backward"),
        },
    ),
    (
        "trainer _update minus optimizer step and zero_grad",
        ("train/loop.py", "_update"),
        {("torch/optim/optimizer.py", "wrapper"), ("torch/optim/optimizer.py", "zero_grad")},
    ),
)


def profile_engine(pair: Pair, steps: int, top: int = 12) -> list[str]:
    """Where the engine's extra time goes, from a cProfile of one engine run.

    Rows: the engine's own functions (trainer and its logging, Distiller, taps) by cumulative
    time in ms per step, leaving out the functions that mostly wrap the models and losses;
    then, for those wrappers, their time minus the work a hand-written loop does as well
    (:data:`RESIDUALS`). Profiling slows Python code more than tensor kernels, so these numbers
    overstate the overhead: they show its parts, not its size. Nested functions are also
    counted in their callers.
    """
    loader = make_loader(pair.batch_size, steps)
    val_batch = [next(iter(make_loader(pair.batch_size, 1)))]
    run_engine(pair, loader, val_batch)  # warm-up
    profiler = cProfile.Profile()
    profiler.enable()
    run_engine(pair, loader, val_batch)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows, cumulative_of = [], {}
    for (file_name, line, function), (_, calls, _, cumulative, _) in stats.items():
        short = file_name.split("site-packages/")[-1].split("torchkd/")[-1]
        key = (short, function)
        cumulative_of[key] = cumulative_of.get(key, 0.0) + cumulative
        engine = any(part in file_name for part in ENGINE_FILES)
        if engine and calls >= 10 and function not in CONTAINERS:
            rows.append((cumulative, f"{short}:{line} {function}", str(calls)))
    rows.sort(reverse=True)
    rows = rows[:top]
    for label, container, shared in RESIDUALS:
        inner = sum(cumulative_of.get(key, 0.0) for key in shared)
        rows.append((cumulative_of.get(container, 0.0) - inner, label, ""))
    header = "| engine function | calls | ms/step (cumulative, profiled) |"
    lines = [header, "|---|---|---|"]
    for seconds, name, calls in rows:
        lines.append(f"| {name} | {calls} | {1e3 * seconds / steps:.3f} |")
    return lines


def describe_environment() -> str:
    details = environment()
    return (
        f"torch {details['torch']}, {details['threads']} thread(s), CPU {details['cpu']} "
        f"({details['cores']} cores available), Python {details['python']}, device cpu"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of a long run")
    parser.add_argument("--short-steps", type=int, default=20, help="steps of a short run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--pairs", nargs="+", choices=[pair.name for pair in PAIRS], default=[p.name for p in PAIRS]
    )
    parser.add_argument("--profile", action="store_true", help="profile the engine and exit")
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()
    if args.steps <= args.short_steps or args.repeats < 1:
        parser.error("need --steps > --short-steps and --repeats >= 1")
    torch.set_num_threads(args.threads)
    print(describe_environment())
    pairs = [pair for pair in PAIRS if pair.name in args.pairs]
    if args.profile:
        for pair in pairs:
            print(f"## {pair.name}", *profile_engine(pair, args.steps), sep="\n")
        return
    header = (
        "| pair | teacher → student | batch | hand-written (ms/step) | engine (ms/step) "
        "| overhead |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    missed = []
    for pair in pairs:
        times = per_step_times(pair, args.steps, args.short_steps, args.repeats)
        hand, engine = (statistics.median(times[name]) for name in ("hand", "engine"))
        overhead = engine / hand - 1
        mark = ""
        if overhead > TARGET_OVERHEAD:
            mark = " (above the 5% target)"
            missed.append(pair)
        lines.append(
            f"| {pair.name} | cnn1d({pair.teacher_width}) → cnn1d({pair.student_width}) | "
            f"{pair.batch_size} | {1e3 * hand:.3f} | {1e3 * engine:.3f} | "
            f"{100 * overhead:+.1f}%{mark} |"
        )
        print(lines[-1], flush=True)
    command = "python " + " ".join(["benchmarks/engine_overhead.py", *sys.argv[1:]])
    text = "\n".join(
        [
            "# Engine overhead: Distiller + fit vs a hand-written loop",
            "",
            f"Command: `{command}`",
            "",
            f"Environment: {describe_environment()}.",
            "",
            f"Per-step time, median of {args.repeats} interleaved repetitions; each repetition "
            f"is the slope between a {args.steps}-step and a {args.short_steps}-step run, so "
            "per-run costs (optimizer construction, one validation pass, checkpoint writes) "
            "are excluded. Same batches, same losses, same Adam step in both. "
            "Target: overhead ≤ 5%.",
            "",
            *lines,
            "",
        ]
    )
    for pair in missed:
        text += "\n".join(
            [
                "",
                f"## Where the engine's time goes ({pair.name} pair)",
                "",
                "cProfile of one engine run (profiling inflates Python-side costs, so read "
                "the parts, not the total):",
                "",
                *profile_engine(pair, args.steps),
                "",
            ]
        )
    print()
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
