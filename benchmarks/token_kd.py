"""Token-level distillation at language-model scale: memory and time of forward + backward.

For each size ``N x H x V`` (tokens, hidden size of both models, vocabulary; float32, CPU) and
divergence, the variants below run **one process per measurement**, interleaved (a b1 b2 b3 c d,
a b1 ... for ``--repeats`` rounds). Each process builds its inputs (student hidden ``[N, H]`` and
weight ``[V, H]`` requiring grad, a frozen teacher's hidden ``[N, H]`` and weight ``[V, H]``), runs
the variant once on a tiny problem (library warm-up), records its peak RSS, then runs one
forward + backward at full size and reports the wall time and the peak RSS above that baseline
(``resource.getrusage``: a process's peak never goes down, hence one process per number).

- (a) ``plain``: logits of both models materialized, ``log_softmax``, the divergence by autograd;
- (b) ``fused``: :func:`torchkd.losses.fused_linear_kd_loss` at its default chunk size and at
  a quarter and four times it;
- (c) ``liger``: Liger-Kernel's ``LigerFusedLinearJSDLoss`` (``compiled=False``, its default
  chunk size, hard-label weight 0; ``beta=0`` is its forward KL); skipped with a note when
  ``liger-kernel`` is not installed (``pip install --no-deps liger-kernel``; never a torchkd
  dependency);
- (d) ``matmuls``: the bare matrix products a chunked loss cannot avoid (both sides' logits,
  the student's hidden and weight gradients) in chunks of 1024 rows: the time floor.

The table gives medians over the repeats, ratios to (a) for memory and to (d) for time, and the
targets of issue 9 at 4096 x 1024 x 128256. Every variant's loss value is printed too (they
must agree). Usage::

    .venv/bin/python benchmarks/token_kd.py                       # the full table (long)
    .venv/bin/python benchmarks/token_kd.py --sizes 1024x512x32000 --repeats 3 --output /tmp/t.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses import fused_linear_kd_loss
from torchkd.losses.fused_options import default_chunk_size

RESULTS = Path(__file__).parent / "results" / "token_kd.md"
DEFAULT_SIZES = tuple(
    f"{n}x{h}x{v}" for n in (2048, 4096) for h in (512, 1024) for v in (32000, 128256)
)
TARGET_SIZE = "4096x1024x128256"
JSD_BETA = 0.5
WARMUP_SIZE = (16, 8, 64)
FLOOR_CHUNK = 1024  # (d) in 1024-row chunks: large enough for full-speed products


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, h, v = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"a size is NxHxV, e.g. 2048x1024x128256: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    return n, h, v


def liger_available() -> bool:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- the variants


def make_inputs(
    n: int,
    h: int,
    v: int,
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Student hidden ``[n, h]`` and weight ``[v, h]`` requiring grad, the frozen teacher's,
    and labels, drawn on ``device`` (a generator there) and rounded to ``dtype``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    scale = 3.0 / h**0.5  # logits with standard deviation ~3: peaked, like a trained LM's

    def randn(*shape: int, factor: float = 1.0) -> Tensor:
        values = torch.randn(*shape, generator=generator, device=device) * factor
        return values.to(dtype)

    return {
        "student_hidden": randn(n, h).requires_grad_(),
        "student_weight": randn(v, h, factor=scale).requires_grad_(),
        "teacher_hidden": randn(n, h),
        "teacher_weight": randn(v, h, factor=scale),
        "labels": torch.randint(0, v, (n,), generator=generator, device=device),
    }


def plain(inputs: dict[str, Tensor], divergence: str, chunk: int | None) -> Tensor:
    del chunk
    with torch.no_grad():
        teacher = F.log_softmax(inputs["teacher_hidden"] @ inputs["teacher_weight"].T, dim=-1)
    student = F.log_softmax(inputs["student_hidden"] @ inputs["student_weight"].T, dim=-1)
    rows = student.shape[0]
    if divergence == "forward_kl":
        return F.kl_div(student, teacher, reduction="sum", log_target=True) / rows
    mixture = torch.logaddexp(
        student + torch.log1p(torch.tensor(-JSD_BETA)), teacher + torch.log(torch.tensor(JSD_BETA))
    )
    teacher_part = F.kl_div(mixture, teacher, reduction="sum", log_target=True)
    student_part = F.kl_div(mixture, student, reduction="sum", log_target=True)
    return (JSD_BETA * teacher_part + (1 - JSD_BETA) * student_part) / rows


def fused(inputs: dict[str, Tensor], divergence: str, chunk: int | None) -> Tensor:
    return fused_linear_kd_loss(
        inputs["student_hidden"],
        inputs["student_weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        divergence="forward_kl" if divergence == "forward_kl" else "jsd",
        beta=JSD_BETA,
        chunk_size=chunk,
    )


def liger(inputs: dict[str, Tensor], divergence: str, chunk: int | None) -> Tensor:
    del chunk
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    loss = LigerFusedLinearJSDLoss(
        weight_hard_loss=0.0,
        weight_soft_loss=1.0,
        beta=0.0 if divergence == "forward_kl" else JSD_BETA,
        compiled=False,
    )
    return loss(
        inputs["student_hidden"],
        inputs["student_weight"],
        inputs["teacher_hidden"],
        inputs["teacher_weight"],
        inputs["labels"],
    )


def matmuls(inputs: dict[str, Tensor], divergence: str, chunk: int | None) -> Tensor:
    """The products of a chunked loss: both sides' logits, then the student's gradients."""
    del divergence
    hidden, weight = inputs["student_hidden"].detach(), inputs["student_weight"].detach()
    teacher_hidden, teacher_weight = inputs["teacher_hidden"], inputs["teacher_weight"]
    rows, vocab = hidden.shape[0], weight.shape[0]
    chunk = min(chunk or FLOOR_CHUNK, rows)
    student_logits = torch.empty(min(chunk, rows), vocab)
    teacher_logits = torch.empty_like(student_logits)
    grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
    for start in range(0, rows, chunk):
        block = slice(start, min(start + chunk, rows))
        size = block.stop - start
        torch.mm(hidden[block], weight.T, out=student_logits[:size])
        torch.mm(teacher_hidden[block], teacher_weight.T, out=teacher_logits[:size])
        torch.mm(student_logits[:size], weight, out=grad_hidden[block])
        grad_weight.addmm_(student_logits[:size].T, hidden[block])
    inputs["student_hidden"].grad, inputs["student_weight"].grad = grad_hidden, grad_weight
    return torch.tensor(float("nan"))


VARIANTS = {"plain": plain, "fused": fused, "liger": liger, "matmuls": matmuls}


def worker(args: argparse.Namespace) -> None:
    """One measurement: print ``{"seconds", "extra_bytes", "loss"}`` as JSON."""
    torch.set_num_threads(args.threads)
    run = VARIANTS[args.variant]
    warmup = make_inputs(*WARMUP_SIZE)
    loss = run(warmup, args.divergence, 4)
    if loss.requires_grad:
        loss.backward()
    del warmup, loss
    inputs = make_inputs(args.n, args.h, args.v)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss = run(inputs, args.divergence, args.chunk)
    if loss.requires_grad:
        loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "extra_bytes": peak - baseline, "loss": loss.item()}))


# --------------------------------------------------------------------------- the driver


def variant_list(vocab: int, rows: int, with_liger: bool) -> list[tuple[str, str, int | None]]:
    """``(label, variant, chunk)`` in the interleaving order."""
    default = min(default_chunk_size(vocab), rows)
    smaller, larger = max(8, default // 4), min(rows, default * 4)
    variants = [
        ("(a) plain", "plain", None),
        (f"(b) fused, default chunk {default}", "fused", None),
    ]
    variants += [
        (f"(b) fused, chunk {c}", "fused", c)
        for c in dict.fromkeys((smaller, larger))
        if c != default
    ]
    if with_liger:
        variants.append(("(c) Liger LigerFusedLinearJSDLoss", "liger", None))
    variants.append((f"(d) bare matmuls, chunk {min(FLOOR_CHUNK, rows)}", "matmuls", None))
    return variants


def measure(
    size: tuple[int, int, int], divergence: str, variant: str, chunk: int | None, threads: int
) -> dict[str, float]:
    n, h, v = size
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--variant",
        variant,
        "--divergence",
        divergence,
        "--n",
        str(n),
        "--h",
        str(h),
        "--v",
        str(v),
        "--threads",
        str(threads),
    ]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe_environment(threads: int, with_liger: bool) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    liger_version = "not installed"
    if with_liger:
        from importlib.metadata import version

        liger_version = version("liger-kernel")
    return (
        f"torch {torch.__version__}, {threads} threads, CPU {cpu} ({os.cpu_count()} logical "
        f"cores), Python {platform.python_version()}, liger-kernel {liger_version}, 1-minute "
        f"load average at the end {os.getloadavg()[0]:.1f}"
    )


def gigabytes(value: float) -> str:
    return f"{value / 1e9:.2f}"


def table(results: dict, sizes: list, divergences: list, order: dict) -> list[str]:
    lines = [
        "| size N x H x V | divergence | variant | extra peak (GB) | bytes / (token x vocab) "
        "| / (a) memory | time (s) | / (d) time | loss |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        n, h, v = size
        for divergence in divergences:
            rows = results[(size, divergence)]
            base_memory = rows.get("(a) plain", {}).get("extra_bytes")
            floor = next((r.get("seconds") for k, r in rows.items() if k.startswith("(d)")), None)
            for label in order[size]:
                row = rows.get(label)
                if row is None:
                    continue
                name = f"{n} x {h} x {v}"
                if "error" in row:
                    lines.append(
                        f"| {name} | {divergence} | {label} | failed: {row['error']} | | | | | |"
                    )
                    continue
                extra, seconds = row["extra_bytes"], row["seconds"]
                memory_ratio = f"{extra / base_memory:.3f}" if base_memory else "-"
                time_ratio = f"{seconds / floor:.2f}" if floor else "-"
                loss = "-" if row["loss"] != row["loss"] else f"{row['loss']:.6g}"
                lines.append(
                    f"| {name} | {divergence} | {label} | {gigabytes(extra)} | "
                    f"{extra / (n * v):.2f} | {memory_ratio} | {seconds:.2f} | {time_ratio} "
                    f"| {loss} |"
                )
    return lines


def targets(results: dict, divergences: list) -> list[str]:
    size = parse_size(TARGET_SIZE)
    lines = []
    for divergence in divergences:
        rows = results.get((size, divergence))
        if rows is None:
            continue
        fused_row = next(r for k, r in rows.items() if k.startswith("(b) fused, default"))
        plain_row, liger_row = (
            rows.get("(a) plain", {}),
            rows.get("(c) Liger LigerFusedLinearJSDLoss"),
        )
        floor_row = next(r for k, r in rows.items() if k.startswith("(d)"))
        checks = []
        if "extra_bytes" in fused_row and "extra_bytes" in plain_row:
            ratio = fused_row["extra_bytes"] / plain_row["extra_bytes"]
            checks.append(
                f"extra peak {ratio:.1%} of (a) (target <= 8%: "
                f"{'met' if ratio <= 0.08 else 'missed'})"
            )
        if "seconds" in fused_row and "seconds" in floor_row:
            ratio = fused_row["seconds"] / floor_row["seconds"]
            checks.append(
                f"time {ratio:.2f}x (d) (target <= 1.10: {'met' if ratio <= 1.10 else 'missed'})"
            )
        if liger_row and "seconds" in liger_row and "seconds" in fused_row:
            memory = fused_row["extra_bytes"] < liger_row["extra_bytes"]
            speed = fused_row["seconds"] <= liger_row["seconds"]
            checks.append(
                f"memory below (c): {'met' if memory else 'missed'}; "
                f"time <= (c): {'met' if speed else 'missed'}"
            )
        lines.append(f"- {TARGET_SIZE}, {divergence}: " + "; ".join(checks))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(DEFAULT_SIZES),
        help="comma-separated NxHxV (default: the 8 sizes of issue 9)",
    )
    parser.add_argument(
        "--divergences",
        default="forward_kl,jsd",
        help="forward_kl and/or jsd (beta 0.5), comma-separated",
    )
    parser.add_argument("--repeats", type=int, default=5, help="processes per variant and size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--divergence", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    for name in ("n", "h", "v"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sizes = [parse_size(text) for text in args.sizes.split(",")]
    divergences = args.divergences.split(",")
    for divergence in divergences:
        if divergence not in ("forward_kl", "jsd"):
            parser.error(f"--divergences: forward_kl or jsd, got {divergence!r}")
    with_liger = liger_available()
    if not with_liger:
        print(
            "note: liger-kernel is not installed; variant (c) is skipped "
            "(pip install --no-deps liger-kernel)"
        )
    samples: dict = {}
    order = {size: [] for size in sizes}
    for repeat in range(args.repeats):
        for size in sizes:
            for divergence in divergences:
                for label, variant, chunk in variant_list(size[2], size[0], with_liger):
                    if label not in order[size]:
                        order[size].append(label)
                    row = measure(size, divergence, variant, chunk, args.threads)
                    samples.setdefault((size, divergence, label), []).append(row)
                    shown = {
                        k: (round(x, 3) if isinstance(x, float) else x) for k, x in row.items()
                    }
                    print(
                        f"[{repeat + 1}/{args.repeats}] {size} {divergence} {label}: {shown}",
                        flush=True,
                    )
    results: dict = {}
    for (size, divergence, label), rows in samples.items():
        good = [row for row in rows if "error" not in row]
        summary = (
            rows[-1]
            if not good
            else {
                key: statistics.median(row[key] for row in good)
                for key in ("seconds", "extra_bytes", "loss")
            }
        )
        results.setdefault((size, divergence), {})[label] = summary
    command = "python benchmarks/token_kd.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Token-level distillation: fused vs plain vs Liger (forward + backward, float32, CPU)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Environment: {describe_environment(args.threads, with_liger)}.",
        "",
        f"One process per measurement, variants interleaved, median of {args.repeats} "
        "processes. Extra peak = peak RSS minus the RSS after building the inputs (student "
        "hidden + weight requiring grad, frozen teacher hidden + weight); it includes the "
        "student weight's gradient (V x H x 4 bytes) for every variant. Time = one forward + "
        "backward. JSD uses beta 0.5; Liger's beta 0 is its forward KL. (d) is the floor: the "
        "four matrix products alone.",
        "",
        *table(results, sizes, divergences, order),
        "",
        "Targets (issue 9):",
        "",
        *(targets(results, divergences) or [f"- {TARGET_SIZE} not measured in this run"]),
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
