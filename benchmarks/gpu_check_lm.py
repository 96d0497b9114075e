"""Sections (c)-(e) of :mod:`gpu_check`: the command line on tiny Llamas, on the device.

:func:`prepare` writes, once per work directory, a corpus of generated word documents, a
byte-level BPE tokenizer trained on it (offline), a teacher Llama's weights (safetensors, at
its seeded initialization: the check is that the commands run on the device, not what the
student learns) and two recipes on the ``text`` dataset whose ``fused_linear_kd`` term reads
the teacher's hidden states (``train.yaml``) or its top-k cache (``cache.yaml``). Then

- (c) ``torchkd cache-teacher cache.yaml train.device=DEVICE``: the cache's size and its
  error against the dense teacher (from the manifest);
- (d) ``torchkd train train.yaml train.device=DEVICE`` (``train.amp=bf16`` on CUDA) for one
  epoch of a few steps: the first and last step losses from ``metrics.jsonl``;
- (e) ``torchrun --standalone --nproc-per-node N -m torchkd train train.yaml
  train.distributed=ddp train.device=cuda``, N = ``torch.cuda.device_count()`` > 1 (NCCL);
  skipped with one GPU or on a dry run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from torchkd.cli import main as torchkd_main
from torchkd.config import ModelConfig, build_model
from torchkd.data import train_bpe_tokenizer
from torchkd.lm.cache import read_manifest

WORDS = "the teacher writes its top tokens once and the student reads them back every epoch"
LM = {  # per mode: documents, words in the first, tokens per sample, batch, hidden sizes
    "gpu": {"documents": 64, "words": 40, "seq_len": 64, "batch_size": 8, "hidden": (128, 64)},
    "dry": {"documents": 12, "words": 20, "seq_len": 16, "batch_size": 8, "hidden": (32, 16)},
}
VOCAB = 400  # the tokenizer's at most, and the models' vocabulary


def llama(hidden: int, layers: int) -> dict:
    return {
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }


def prepare(work: Path, mode: str) -> Path:
    """The corpus, tokenizer, teacher weights and recipes under ``work/lm`` (made once)."""
    root = work / "lm"
    if (root / "train.yaml").exists():
        return root
    sizes, words = LM[mode], WORDS.split()
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for number in range(sizes["documents"]):
        text = " ".join(
            words[(number * 5 + i) % len(words)] for i in range(sizes["words"] + 7 * number)
        )
        (corpus / f"doc{number:03d}.txt").write_text(text)
    train_bpe_tokenizer(sorted(corpus.glob("*.txt")), VOCAB, root / "tokenizer")
    teacher_hidden, student_hidden = sizes["hidden"]
    teacher = ModelConfig(model="hf_causal_lm", kwargs={"config": llama(teacher_hidden, 2)})
    torch.manual_seed(0)
    save_file(build_model(teacher, "teacher").state_dict(), root / "teacher.safetensors")
    recipe = {
        "name": "gpu_check_lm",
        "data": {
            "dataset": "text",
            "kwargs": {
                "files": [f"{corpus}/*.txt"],
                "tokenizer": str(root / "tokenizer"),
                "seq_len": sizes["seq_len"],
                "cache": str(root / "text"),
            },
            "batch_size": sizes["batch_size"],
            "val_fraction": 0.2,
        },
        "teacher": {**teacher.model_dump(), "checkpoint": str(root / "teacher.safetensors")},
        "student": {"model": "hf_causal_lm", "kwargs": {"config": llama(student_hidden, 1)}},
        "terms": [{"name": "kd", "loss": "fused_linear_kd"}],
        "train": {"epochs": 1, "seed": 0, "progress": False, "log_every_steps": 1},
    }
    cached = {
        **recipe,
        "data": {**recipe["data"], "teacher_cache": {"dir": str(root / "cache"), "k": 8}},
        "terms": [{**recipe["terms"][0], "teacher": "cache"}],
    }
    (root / "train.yaml").write_text(yaml.safe_dump(recipe))
    (root / "cache.yaml").write_text(yaml.safe_dump(cached))
    return root


def run_command(argv: list[str]) -> float:
    """Seconds of ``torchkd ARGV`` run in this process; a nonzero exit is an error."""
    start = time.perf_counter()
    code = torchkd_main(argv)
    if code:
        raise SystemExit(f"torchkd {' '.join(argv)} exited with {code}")
    return time.perf_counter() - start


def cache(device: torch.device, mode: str, work: Path) -> dict:
    root = prepare(work, mode)
    override = f"train.device={device.type}"
    seconds = run_command(
        ["cache-teacher", str(root / "cache.yaml"), override, "--error-batches", "2"]
    )
    manifest = read_manifest(root / "cache")
    error = manifest["error"]
    return {
        "status": "ok",
        "columns": ["tokens cached", "bytes on disk", "loss rel. error", "grad rel. error", "s"],
        "rows": [
            [
                f"{manifest['tokens']:,}",
                f"{manifest['bytes_on_disk']:,}",
                f"{error['loss_relative_error']:.3g}",
                f"{error['grad_relative_error']:.3g}",
                f"{seconds:.1f}",
            ]
        ],
        "notes": [
            f"`torchkd cache-teacher cache.yaml {override} --error-batches 2`, "
            "k = 8; the errors are the manifest's (top-8 of an untrained, near-uniform "
            "teacher over 400 tokens: large by construction)."
        ],
    }


def step_losses(run_dir: Path) -> list[float]:
    records = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [record["loss"] for record in records if record["kind"] == "step"]


def train_row(run_dir: Path, seconds: float) -> list[str]:
    losses = step_losses(run_dir)
    if not losses:
        raise SystemExit(f"{run_dir / 'metrics.jsonl'}: no step records")
    return [str(len(losses)), f"{losses[0]:.4g}", f"{losses[-1]:.4g}", f"{seconds:.1f}"]


TRAIN_COLUMNS = ["steps", "first step loss", "last step loss", "s"]


def train(device: torch.device, mode: str, work: Path) -> dict:
    root = prepare(work, mode)
    amp = "bf16" if device.type == "cuda" else "none"
    overrides = [f"train.device={device.type}", f"train.amp={amp}"]
    run_dir = work / "runs" / "train"
    seconds = run_command(
        ["train", str(root / "train.yaml"), "--run-dir", str(run_dir), *overrides]
    )
    return {
        "status": "ok",
        "columns": TRAIN_COLUMNS,
        "rows": [train_row(run_dir, seconds)],
        "notes": [f"`torchkd train train.yaml {' '.join(overrides)}`, one epoch."],
    }


def ddp(device: torch.device, mode: str, work: Path) -> dict:
    if mode == "dry":
        reason = "skipped: dry run on the CPU (NCCL needs CUDA GPUs)"
        return {"status": reason, "columns": [], "rows": [], "notes": []}
    processes = torch.cuda.device_count()
    if processes < 2:
        return {"status": "skipped: one GPU", "columns": [], "rows": [], "notes": []}
    root = prepare(work, mode)
    run_dir = work / "runs" / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch += [f"--nproc-per-node={processes}", "-m", "torchkd", "train", str(root / "train.yaml")]
    overrides = ["train.distributed=ddp", "train.device=cuda", "train.amp=bf16"]
    start = time.perf_counter()
    subprocess.run([*launch, "--run-dir", str(run_dir), *overrides], check=True)
    seconds = time.perf_counter() - start
    return {
        "status": "ok",
        "columns": TRAIN_COLUMNS,
        "rows": [train_row(run_dir, seconds)],
        "notes": [
            f"`torchrun --standalone --nproc-per-node {processes} -m torchkd train train.yaml "
            f"{' '.join(overrides)}` ({device.type}, NCCL), one epoch."
        ],
    }


LM_SECTIONS = {"cache": cache, "train": train, "ddp": ddp}
