"""The CUDA check: one prepared run of everything that needs a GPU, with a CPU dry run.

``bash benchmarks/gpu_check.sh`` runs each section below as its own process (its own timeout)
and then this script with ``--report``, which gathers the sections' JSON into one Markdown
table (``benchmarks/results/gpu.md``; with ``--dry-run`` the file given by ``--out``, never the
published one):

- (a) ``correctness``: :func:`torchkd.losses.fused_linear_kd_loss` against a dense float64
  reference (``token_kd.plain`` on the same rounded inputs, upcast) for forward KL and JSD
  (β = 0.5) with float32 and bfloat16 inputs: the loss and its gradients w.r.t. the student's
  hidden states and weight. Both dtypes are computed in float32 (half-precision inputs are
  upcast), so the bound is ``tests/tolerances.py``'s :func:`divergence_tolerance` at
  ``ε = 2⁻²³``, plus the rounding of each result to its dtype, ``u_d · max|ref|`` with
  ``u_d = eps(d) / 2`` (the loss is float32; a gradient has its input's dtype). TF32 is off.
- (b) ``memory``: forward + backward of ``token_kd``'s ``plain`` (full logits), ``fused``
  (default chunk) and ``liger`` (``LigerFusedLinearJSDLoss``; skipped when ``liger-kernel``
  is missing) at Liger's published configuration BT = 8192, H = 4096, V = 128256, bfloat16:
  ``torch.cuda.max_memory_allocated`` above the inputs (reset before each run; it includes
  the student weight's gradient) and the median time of the repeats after one warm-up, both
  also as ratios to ``plain``.
- (c) ``cache``, (d) ``train``, (e) ``ddp``: ``torchkd cache-teacher``, ``torchkd train`` and
  ``torchrun ... torchkd train`` (``train.distributed=ddp``, NCCL; only with more than one
  GPU) on tiny Llamas (:mod:`gpu_check_lm`).

``--dry-run`` runs every section on the CPU at small shapes (BT = 64, H = 32, V = 512; DDP is
skipped with its reason): ``tests/test_gpu_check.py`` runs it. Usage::

    bash benchmarks/gpu_check.sh              # on a CUDA machine: benchmarks/results/gpu.md
    bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the suite's error bounds

from token_kd import JSD_BETA, fused, liger, liger_available, make_inputs, plain  # noqa: E402
from tolerances import FLOAT32_EPS, divergence_tolerance  # noqa: E402

from torchkd.losses._compile import should_compile  # noqa: E402
from torchkd.losses.fused_options import default_chunk_size  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "gpu.md"
SIZES = {  # (BT, H, V) per section; "dry" on the CPU
    "gpu": {"correctness": (4096, 512, 32000), "memory": (8192, 4096, 128256)},
    "dry": {"correctness": (64, 32, 512), "memory": (64, 32, 512)},
}
REPEATS = {"gpu": 3, "dry": 2}
DIVERGENCES = ("forward_kl", "jsd")
TITLES = {
    "correctness": "(a) fused loss vs dense float64 reference",
    "memory": "(b) memory and time: plain vs fused vs Liger",
    "cache": "(c) torchkd cache-teacher",
    "train": "(d) tiny LM distillation, torchkd train",
    "ddp": "(e) DDP with NCCL, torchrun",
}
LIGER_MISSING = "skipped: liger-kernel not installed (pip install --no-deps liger-kernel)"


def pick_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run `bash benchmarks/gpu_check.sh --dry-run` on a CPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 products in float32
    return torch.device("cuda")


def kernel(chunk: int, vocab: int, dtype: torch.dtype, device: torch.device) -> str:
    """Which kernel computed a ``[chunk, V]`` block of the fused loss (after the run: a failed
    compilation has switched to eager by then)."""
    probe = torch.empty(chunk, vocab, dtype=dtype, device=device)
    return "torch.compile" if should_compile(probe) else "eager"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- (a) correctness


def max_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result.detach().double() - reference).abs().max())


def correctness(device: torch.device, mode: str) -> dict:
    tokens, hidden, vocab = SIZES[mode]["correctness"]
    chunk = max(1, min(default_chunk_size(vocab), tokens // 4))  # at least four chunks
    columns = ["inputs", "divergence", "quantity", "max abs error", "bound", "result"]
    rows, failed = [], 0
    for dtype in (torch.float32, torch.bfloat16):
        inputs = make_inputs(tokens, hidden, vocab, seed=1, device=device, dtype=dtype)
        exact = {
            key: value.detach().double().requires_grad_(value.requires_grad)
            if value.is_floating_point()
            else value
            for key, value in inputs.items()
        }
        student, teacher = (
            (exact[f"{side}_hidden"].detach(), exact[f"{side}_weight"].detach())
            for side in ("student", "teacher")
        )
        unit = torch.finfo(dtype).eps / 2  # the rounding of a gradient to the input's dtype
        for divergence in DIVERGENCES:
            for tensors in (inputs, exact):
                tensors["student_hidden"].grad = tensors["student_weight"].grad = None
            reference = plain(exact, divergence, None)
            reference.backward()
            loss = fused(inputs, divergence, chunk)
            loss.backward()
            synchronize(device)
            bound = divergence_tolerance(
                student[0] @ student[1].T,
                teacher[0] @ teacher[1].T,
                temperature=1.0,
                divergence=divergence,
                beta=JSD_BETA,
                student_projection=student,
                teacher_projection=teacher,
                eps=FLOAT32_EPS,
            )
            checks = [
                ("loss", loss, reference.detach(), bound.loss, FLOAT32_EPS / 2),
                (
                    "grad hidden",
                    inputs["student_hidden"].grad,
                    exact["student_hidden"].grad,
                    bound.hidden,
                    unit,
                ),
                (
                    "grad weight",
                    inputs["student_weight"].grad,
                    exact["student_weight"].grad,
                    bound.weight,
                    unit,
                ),
            ]
            for quantity, result, expected, derived, rounding in checks:
                error = max_error(result, expected)
                limit = derived + rounding * float(expected.abs().max())
                failed += not error <= limit
                rows.append(
                    [
                        str(dtype).removeprefix("torch."),
                        divergence,
                        quantity,
                        f"{error:.3g}",
                        f"{limit:.3g}",
                        "pass" if error <= limit else "FAIL",
                    ]
                )
        del inputs, exact, student, teacher
    return {
        "status": f"FAIL: {failed} of {len(rows)} checks" if failed else "ok",
        "columns": columns,
        "rows": rows,
        "notes": [
            f"BT = {tokens}, H = {hidden}, V = {vocab}, chunk {chunk} rows, T = 1, on {device}, "
            f"{kernel(chunk, vocab, torch.float32, device)} kernel.",
            "Bound: divergence_tolerance (tests/tolerances.py) at float32's eps (both dtypes "
            "compute in float32) + eps(dtype) / 2 x max|reference| (the result's rounding).",
        ],
    }


# --------------------------------------------------------------------------- (b) memory, time


def run_once(
    variant: Callable, inputs: dict, divergence: str, device: torch.device
) -> tuple[float, float | None, float]:
    """``(seconds, peak bytes above the inputs or None on CPU, loss)`` of forward + backward."""
    inputs["student_hidden"].grad = inputs["student_weight"].grad = None
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    synchronize(device)
    start = time.perf_counter()
    loss = variant(inputs, divergence, None)
    loss.backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - baseline if cuda else None
    return seconds, peak, float(loss)


def memory(device: torch.device, mode: str) -> dict:
    tokens, hidden, vocab = SIZES[mode]["memory"]
    repeats = REPEATS[mode]
    chunk = min(default_chunk_size(vocab), tokens)  # bfloat16 computes in float32
    variants = {"plain": plain, "fused": fused}
    if liger_available():
        variants["liger"] = liger
    columns = [
        "divergence",
        "variant",
        "peak above inputs (GB)",
        "memory / plain",
        "median time (ms)",
        "time / plain",
        "loss",
    ]
    rows = []
    for divergence in DIVERGENCES:
        inputs = make_inputs(tokens, hidden, vocab, device=device, dtype=torch.bfloat16)
        samples: dict[str, list] = {name: [] for name in variants}
        for repeat in range(repeats + 1):  # round 0 is the warm-up (compilation)
            for name, variant in variants.items():
                try:
                    sample = run_once(variant, inputs, divergence, device)
                except torch.cuda.OutOfMemoryError:
                    sample = None
                if repeat and sample is not None:
                    samples[name].append(sample)
        base = samples["plain"]
        base_time = statistics.median(s[0] for s in base) if base else None
        base_peak = max(s[1] for s in base) if base and base[0][1] is not None else None
        for name, measured in samples.items():
            if not measured:
                rows.append([divergence, name, "failed: out of memory", "", "", "", ""])
                continue
            seconds = statistics.median(s[0] for s in measured)
            peak = None if measured[0][1] is None else max(s[1] for s in measured)
            rows.append(
                [
                    divergence,
                    name,
                    "- (CPU)" if peak is None else f"{peak / 1e9:.2f}",
                    f"{peak / base_peak:.3f}" if peak is not None and base_peak else "-",
                    f"{seconds * 1e3:.1f}",
                    f"{seconds / base_time:.2f}" if base_time else "-",
                    f"{measured[-1][2]:.6g}",
                ]
            )
        if "liger" not in variants:
            rows.append([divergence, "liger", LIGER_MISSING, "", "", "", ""])
        del inputs
    return {
        "status": "ok",
        "columns": columns,
        "rows": rows,
        "notes": [
            f"BT = {tokens}, H = {hidden}, V = {vocab}, bfloat16 inputs on {device}, fused chunk "
            f"{chunk} rows ({kernel(chunk, vocab, torch.float32, device)} kernel); median of "
            f"{repeats} runs after a warm-up, variants interleaved; peak = "
            "torch.cuda.max_memory_allocated minus the memory allocated before the run (the "
            "student weight's gradient included). JSD: beta 0.5; Liger's beta 0 is forward KL."
        ],
    }


# --------------------------------------------------------------------------- the report


def environment(device: torch.device) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        liger_version = version("liger-kernel")
    except PackageNotFoundError:
        liger_version = "not installed"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        where = f"{name} x {torch.cuda.device_count()}, CUDA {torch.version.cuda}"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), dry run"
    return (
        f"{where}; torch {torch.__version__}, Python {platform.python_version()}, "
        f"liger-kernel {liger_version}"
    )


def section_status(work: Path, name: str) -> dict:
    """A section's JSON, or what became of it: timed out, or failed with its last line."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    rc = (work / f"{name}.rc").read_text().strip() if (work / f"{name}.rc").exists() else "?"
    limit = (work / f"{name}.limit").read_text().strip()
    log = work / f"{name}.log"
    lines = log.read_text().strip().splitlines() if log.exists() else []
    if rc in ("124", "137"):
        status = f"timed out after {limit} s"
    else:
        status = f"failed (exit {rc}): {lines[-1] if lines else 'no output'}"
    return {"status": status, "seconds": None, "columns": [], "rows": [], "notes": []}


def report(work: Path, out: Path, command: str, device: torch.device) -> bool:
    """Write the table to ``out``; whether every section passed or was skipped."""
    sections = {name: section_status(work, name) for name in TITLES}
    dry, stamp = device.type == "cpu", time.gmtime()
    lines = [
        "# GPU check: the fused loss, memory and time, cache-teacher, LM training and DDP on CUDA",
        "",
        *(
            [
                "**Dry run on the CPU at small shapes: it exercises the script, it measures "
                "nothing.**",
                "",
            ]
            if dry
            else []
        ),
        f"Command: `{command}`",
        "",
        f"Environment: {environment(device)}; {time.strftime('%Y-%m-%d %H:%M UTC', stamp)}.",
        "",
        "| section | result | seconds |",
        "|---|---|---:|",
    ]
    for name, section in sections.items():
        seconds = section["seconds"]
        lines.append(
            f"| {TITLES[name]} | {section['status']} | {'-' if not seconds else f'{seconds:.1f}'} |"
        )
    for name, section in sections.items():
        lines += ["", f"## {TITLES[name]}", ""]
        if section["rows"]:
            lines.append("| " + " | ".join(section["columns"]) + " |")
            lines.append("|" + "---|" * len(section["columns"]))
            lines += ["| " + " | ".join(map(str, row)) + " |" for row in section["rows"]]
            lines.append("")
        lines += [*section["notes"], section["status"]] if section["notes"] else [section["status"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written to {out}")
    return all(section["status"].startswith(("ok", "skipped:")) for section in sections.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes")
    parser.add_argument("--section", choices=TITLES, help="run one section into --work")
    parser.add_argument("--report", action="store_true", help="gather --work into --out")
    parser.add_argument("--work", type=Path, required=True, help="the sections' JSON and logs")
    parser.add_argument("--out", type=Path, help=f"the table (default {RESULTS})")
    parser.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    args = parser.parse_args()
    device = pick_device(args.dry_run)
    mode = "dry" if args.dry_run else "gpu"
    if args.report:
        if args.dry_run and (args.out is None or args.out.resolve() == RESULTS):
            parser.error("--dry-run: give --out PATH other than benchmarks/results/gpu.md")
        sys.exit(0 if report(args.work, args.out or RESULTS, args.command, device) else 1)
    if args.section is None:
        parser.error("give --section NAME or --report")
    from gpu_check_lm import LM_SECTIONS

    run = {"correctness": correctness, "memory": memory, **LM_SECTIONS}[args.section]
    start = time.perf_counter()
    result = run(device, mode, args.work) if args.section in LM_SECTIONS else run(device, mode)
    result["seconds"] = time.perf_counter() - start
    (args.work / f"{args.section}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
