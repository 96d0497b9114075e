"""``torchkd demo lm``: corpus and tokenizer, the teacher (trained once, then cached), its top-k
cache (``torchkd cache-teacher``), then every arm at every seed."""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.demo.arms import ArmRun
from torchkd.demo.lm.arms import LM_ARMS, held_out_loader, lm_arm, measure_lm_run, train_lm_arm
from torchkd.demo.lm.corpus import CorpusSettings, corpus_files, demo_tokenizer, training_files
from torchkd.demo.lm.report import LMDemoResult, lm_results_markdown, write_lm_report
from torchkd.demo.lm.teacher import (
    TEACHER_RECIPE,
    corpus_overrides,
    lm_recipe,
    teacher_weights_path,
    train_teacher,
)
from torchkd.demo.run import _results_file, describe_terms
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment

__all__ = [
    "CORPUS",
    "QUICK_CORPUS",
    "QUICK_OVERRIDES",
    "RESULTS_FILE",
    "describe_lm",
    "lm_demo_command",
    "run_lm_demo",
]

if TYPE_CHECKING:
    from torchkd.config import Recipe

Echo = Callable[[str], None]

# Where a full (not --quick) run from a torchkd checkout also writes its table.
RESULTS_FILE = Path("benchmarks") / "results" / "demo_lm.md"

CORPUS = CorpusSettings()
# --quick: a small corpus, a small vocabulary, tiny models and a few steps (tests, smoke runs).
QUICK_CORPUS = CorpusSettings(max_chars=24_000)
QUICK_VOCAB = 320
_QUICK_MODEL = {
    "vocab_size": QUICK_VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
QUICK_OVERRIDES = (
    "train.epochs=1",
    "data.kwargs.seq_len=32",
    "data.val_fraction=0.2",
    "data.kwargs.test_fraction=0.2",
)
_QUICK_ON_POLICY = ("on_policy.prompt_length=16", "on_policy.max_new_tokens=8")
_CACHE_ERROR_BATCHES = 4


def lm_demo_command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    """The ``torchkd demo lm`` command line that repeats a run with these arguments."""
    words = ["torchkd demo lm", f"--seeds {seeds}"]
    words += ["--quick"] if quick else []
    words += [f"--out {out}"] + ([f"--workers {workers}"] if workers is not None else [])
    return " ".join(words)


def describe_lm(config: dict[str, Any]) -> str:
    """``"llama, 6 layers x 256 (4 heads, MLP 688)"`` for an ``hf_causal_lm`` config dict."""
    return (
        f"{config.get('model_type', '?')}, {config.get('num_hidden_layers', '?')} layers × "
        f"{config.get('hidden_size', '?')} ({config.get('num_attention_heads', '?')} heads, MLP "
        f"{config.get('intermediate_size', '?')})"
    )


def _quick_overrides(recipe_name: str) -> list[str]:
    """--quick overrides of one demo recipe: tiny models (the student and any teacher)."""
    recipe = lm_recipe(recipe_name)
    sides = ["student"] + (["teacher"] if recipe.teacher is not None else [])
    overrides = list(QUICK_OVERRIDES)
    for side in sides:
        overrides += [f"{side}.kwargs.config.{key}={value}" for key, value in _QUICK_MODEL.items()]
    if recipe.on_policy is not None:
        overrides += _QUICK_ON_POLICY
    return overrides


def _arm_overrides(
    recipe_name: str, base: Sequence[str], quick: bool, teacher: Path, cache: Path
) -> list[str]:
    """Overrides of one arm's recipe: the corpus, the cached teacher, the top-k cache."""
    recipe = lm_recipe(recipe_name)
    overrides = [*base, *(_quick_overrides(recipe_name) if quick else [])]
    if recipe.teacher is not None:
        overrides.append(f"teacher.checkpoint={json.dumps(str(teacher))}")
    if recipe.data.teacher_cache is not None:
        overrides.append(f"data.teacher_cache.dir={json.dumps(str(cache))}")
    return overrides


def _cache_dir(teacher: Path, recipe_name: str, overrides: Sequence[str]) -> Path:
    """``demo_lm/topk-<key>`` under the torchkd cache, keyed by the teacher's weights file (its
    name holds the teacher's fingerprint) and the cache recipe's data and cache settings."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key

    data = lm_recipe(recipe_name, overrides).data.model_dump(mode="json")
    data["teacher_cache"].pop("dir", None)
    return cache_dir() / "demo_lm" / f"topk-{cache_key({'teacher': teacher.name, 'data': data})}"


def _corpus_summary(files: Sequence[Path], recipe: Recipe, vocab_size: int) -> dict[str, Any]:
    """Files and tokens per split of the demo's data (from the text dataset's cache)."""
    from torchkd.config import build_loaders

    loaders = build_loaders(recipe.data)
    splits = {"train": loaders.train, "val": loaders.val, "test": loaders.test}
    datasets = {name: loader.dataset for name, loader in splits.items() if loader is not None}
    seq_len = int(recipe.data.kwargs["seq_len"])
    return {
        "files": len(files),
        "python": platform.python_version(),
        "split_files": " / ".join(str(len(d.documents)) for d in datasets.values()),
        **{f"{name}_tokens": len(dataset) * seq_len for name, dataset in datasets.items()},
        "vocab_size": vocab_size,
        "seq_len": seq_len,
    }


def cache_teacher(recipe_path: Path, directory: Path, echo: Echo) -> dict[str, Any]:
    """Run ``torchkd cache-teacher RECIPE --dir DIRECTORY`` (one torch thread), echo what it
    prints and return the cache's size and error from its manifest."""
    command = [
        sys.executable, "-m", "torchkd", "cache-teacher", str(recipe_path),
        "--dir", str(directory), "--error-batches", str(_CACHE_ERROR_BATCHES),
    ]  # fmt: skip
    package_parent = str(Path(__file__).resolve().parents[3])
    path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": str(RUN_THREADS), "PYTHONPATH": path}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in completed.stdout.splitlines():
        echo(f"  | {line}")
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr.strip()}"
        )
    manifest = json.loads((directory / "manifest.json").read_text())
    error = manifest["error"]
    return {
        "k": manifest["k"],
        "temperature": manifest["temperature"],
        "tokens": manifest["tokens"],
        "bytes_on_disk": manifest["bytes_on_disk"],
        "bytes_per_token": manifest["bytes_on_disk"] / manifest["tokens"],
        "error_tokens": error["tokens"],
        "loss_relative_error": error["loss_relative_error"],
        "grad_relative_error": error["grad_relative_error"],
        "grad_cosine": error["grad_cosine"],
    }


def run_lm_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo_lm",
    workers: int | None = None,
    echo: Echo = print,
    results: str | Path | None = None,
    corpus: CorpusSettings | None = None,
) -> LMDemoResult:
    """Run the language-model demo and write ``OUT/report.md``; returns what it measured.

    Args:
        seeds: seeds per arm (``0 .. seeds - 1``).
        quick: a tiny corpus and tiny models, a few steps per run (a smoke test).
        out: the demo's output directory (its previous run directories are replaced).
        workers: processes training runs in parallel (default: one per available CPU core,
            each with one thread; ``1`` trains in this process).
        echo: where progress lines go.
        results: where to write the results table (default: ``benchmarks/results/demo_lm.md``
            in a torchkd checkout, for runs that are not ``quick``).
        corpus: which files (default :data:`CORPUS`, or :data:`QUICK_CORPUS` with ``quick``).
    """
    from safetensors.torch import save_file

    from torchkd.config import build_model, write_resolved_config

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    started = time.perf_counter()
    out = Path(out)
    command = lm_demo_command(seeds, quick, out, workers)
    out.mkdir(parents=True, exist_ok=True)

    # corpus and tokenizer (trained on the training split's files only)
    files = corpus_files(corpus or (QUICK_CORPUS if quick else CORPUS))
    teacher_quick = _quick_overrides(TEACHER_RECIPE) if quick else []
    teacher_bare = lm_recipe(TEACHER_RECIPE, teacher_quick)
    vocab_size = int(teacher_bare.student.kwargs["config"]["vocab_size"])
    tokenizer = demo_tokenizer(training_files(files, teacher_bare.data), vocab_size)
    base = corpus_overrides(files, tokenizer)
    teacher_recipe = lm_recipe(TEACHER_RECIPE, [*base, *teacher_quick])
    teacher_weights = teacher_weights_path(teacher_recipe)
    cached = teacher_weights.is_file()
    cache_recipe = next(arm.recipe for arm in LM_ARMS if arm.key == "cache")
    topk_dir = _cache_dir(
        teacher_weights, cache_recipe, [*base, *(_quick_overrides(cache_recipe) if quick else [])]
    )
    overrides = {
        arm.key: _arm_overrides(arm.recipe, base, quick, teacher_weights, topk_dir)
        for arm in LM_ARMS
    }
    runs_total = len(LM_ARMS) * seeds
    if workers is None:
        workers = min(available_cpus(), runs_total + (not cached))
    threads = (
        f"{workers} processes x {RUN_THREADS} thread"
        if workers > 1
        else f"in-process, {RUN_THREADS} thread"
    )
    echo(
        f"{len(files)} standard-library files, tokenizer {tokenizer.name}; "
        f"{'reusing' if cached else 'training'} the teacher ({teacher_weights}); "
        f"{runs_total} student runs ({len(LM_ARMS)} arms x {seeds} seeds), {workers} at a time"
    )
    predictions_path = out / "teacher_test_predictions.safetensors"
    runs: list[ArmRun] = []

    def submit(
        pool: concurrent.futures.Executor, key: str, predictions: Path | None
    ) -> list[Future[ArmRun]]:
        return [
            pool.submit(
                train_lm_arm,
                key,
                seed,
                overrides[key],
                str(out / key / f"seed{seed}"),
                None if predictions is None else str(predictions),
                not quick,
            )
            for seed in range(seeds)
        ]

    def collect(futures: Sequence[Future[ArmRun]]) -> None:
        for future in concurrent.futures.as_completed(futures):
            run = future.result()
            runs.append(run)
            echo(
                f"  {run.arm:<10} seed {run.seed}: test perplexity {run.test['perplexity']:7.2f}, "
                f"agreement {run.test['agreement']:5.1f} %  ({run.seconds:.0f} s)"
            )

    teacher_seconds = 0.0
    with executor(workers) as pool:
        try:
            if not cached:
                teacher_job = pool.submit(
                    train_teacher, [*base, *teacher_quick], str(out / "teacher")
                )
                baseline_jobs = submit(pool, "baseline", None)  # needs no teacher
                teacher_weights, teacher_seconds = teacher_job.result()
            else:
                baseline_jobs = submit(pool, "baseline", predictions_path)
            dense_keys = [arm.key for arm in LM_ARMS if arm.key not in ("baseline", "cache")]
            # the teacher's predictions on the test files are the reference of every arm's
            # agreement: written before any distilled run can finish
            forward = lm_recipe(lm_arm("forward_kl").recipe, overrides["forward_kl"])
            teacher = build_model(forward.teacher, "teacher")
            loader = held_out_loader(lm_arm("forward_kl").recipe, overrides["forward_kl"])
            from torchkd.demo.lm.metrics import evaluate_lm, top1_predictions

            with run_threads():
                predictions = top1_predictions(teacher, loader)
                save_file({"predictions": predictions.contiguous()}, str(predictions_path))
                distill_jobs = [
                    job for key in dense_keys for job in submit(pool, key, predictions_path)
                ]
                teacher_test = evaluate_lm(teacher, loader, predictions)
            # the top-k cache, written by `torchkd cache-teacher` from the cache arm's recipe
            recipe_file = write_resolved_config(
                lm_recipe(cache_recipe, overrides["cache"]), out / "cache_teacher"
            )
            echo(f"torchkd cache-teacher {recipe_file} --dir {topk_dir}")
            cache_stats = cache_teacher(recipe_file, topk_dir, echo)
            distill_jobs += submit(pool, "cache", predictions_path)
            if not cached:
                baseline_runs = [job.result() for job in baseline_jobs]
                baseline_jobs = [
                    pool.submit(measure_lm_run, run, overrides["baseline"], str(predictions_path))
                    for run in baseline_runs
                ]
            collect([*baseline_jobs, *distill_jobs])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    result = LMDemoResult(
        teacher_test=teacher_test,
        teacher_description=describe_lm(teacher_recipe.student.kwargs["config"]),
        student_description=describe_lm(forward.student.kwargs["config"]),
        teacher_cached=cached,
        teacher_seconds=teacher_seconds,
        runs=sorted(runs, key=lambda run: ([a.key for a in LM_ARMS].index(run.arm), run.seed)),
        seeds=list(range(seeds)),
        corpus=_corpus_summary(files, teacher_recipe, vocab_size),
        cache=cache_stats,
        environment={**environment(), "threads": threads},
        teacher_weights=str(teacher_weights),
        arm_terms={arm.key: describe_terms(lm_recipe(arm.recipe)) for arm in LM_ARMS},
        command=command,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_lm_report(result, out, quick=quick)
    results_file = _results_file(results, quick, default=RESULTS_FILE)
    if results_file is not None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(lm_results_markdown(result))
        echo(f"results table written to {results_file}")
    return result
