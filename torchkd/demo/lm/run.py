"""``torchkd demo lm``: corpora and tokenizer, the teacher (trained once, then cached), its
top-k cache (``torchkd cache-teacher``), then every arm at every seed."""

from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from torchkd._extras import require
from torchkd.demo.arms import ArmRun
from torchkd.demo.lm.arms import LM_ARMS, held_out_loader, measure_lm_run, train_lm_arm
from torchkd.demo.lm.corpus import CorpusSettings
from torchkd.demo.lm.plan import (
    CORPUS,
    QUICK_CORPUS,
    LMDemoPlan,
    check_vocabulary,
    describe_lm,
    plan_lm_demo,
)
from torchkd.demo.lm.report import LMDemoResult, lm_results_markdown, write_lm_report
from torchkd.demo.lm.teacher import lm_recipe, train_teacher
from torchkd.demo.run import check_publishable, describe_terms, write_results
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment
from torchkd.terms import CACHE

__all__ = ["RESULTS_FILE", "cache_teacher", "lm_demo_command", "run_lm_demo"]

Echo = Callable[[str], None]

# Where a full (not --quick) run from a torchkd checkout also writes its table.
RESULTS_FILE = Path("benchmarks") / "results" / "demo_lm.md"
_CACHE_ERROR_BATCHES = 4
_DENSE_ARMS = ("forward_kl", "reverse_kl", "jsd", "on_policy")  # read the teacher model


def lm_demo_command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    """The ``torchkd demo lm`` command line that repeats a run with these arguments."""
    words = ["torchkd demo lm", f"--seeds {seeds}"]
    words += ["--quick"] if quick else []
    words += [f"--out {out}"] + ([f"--workers {workers}"] if workers is not None else [])
    return " ".join(words)


def cache_teacher(recipe_path: Path, directory: Path, echo: Echo) -> dict[str, Any]:
    """Run ``torchkd cache-teacher RECIPE --dir DIRECTORY`` (the command itself, in a
    subprocess with one torch thread), echo what it prints and return the cache's size and
    error as it recorded them in the cache's manifest."""
    command = [sys.executable, "-m", "torchkd", "cache-teacher", str(recipe_path)]
    command += ["--dir", str(directory), "--error-batches", str(_CACHE_ERROR_BATCHES)]
    package_parent = str(Path(__file__).resolve().parents[3])  # this torchkd, not another
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


def _describe_arm(recipe_name: str) -> str:
    """The arm's loss terms as resolved, with where the teacher comes from and, for on-policy
    distillation, its settings."""
    recipe = lm_recipe(recipe_name)
    text = describe_terms(recipe)
    if any(term.teacher == CACHE for term in recipe.terms):
        text += " against the top-k cache (teacher: cache)"
    if recipe.on_policy is not None:
        settings = recipe.on_policy.model_dump(exclude_none=True)
        text += " with on_policy(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    return text


def _corpus_summary(plan: LMDemoPlan) -> dict[str, Any]:
    """Files and tokens per split of the students' data (from the text dataset's cache)."""
    from torchkd.config import build_loaders

    recipe = plan.recipe("baseline")
    loaders = build_loaders(recipe.data)
    splits = {"train": loaders.train, "val": loaders.val, "test": loaders.test}
    datasets = {name: loader.dataset for name, loader in splits.items() if loader is not None}
    teacher = build_loaders(plan.recipe("teacher").data, splits=["train"]).train
    seq_len = int(recipe.data.kwargs["seq_len"])
    return {
        "files": len(plan.student_files),
        "teacher_files": len(plan.teacher_files),
        "python": platform.python_version(),
        "split_files": " / ".join(str(len(d.documents)) for d in datasets.values()),
        **{f"{name}_tokens": len(dataset) * seq_len for name, dataset in datasets.items()},
        "teacher_tokens": len(teacher.dataset) * seq_len if teacher is not None else 0,
        "vocab_size": plan.vocab_size,
        "seq_len": seq_len,
        "teacher_epochs": plan.recipe("teacher").train.epochs,
        "student_epochs": recipe.train.epochs,
    }


def run_lm_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo_lm",
    workers: int | None = None,
    echo: Echo = print,
    publish: bool = False,
    corpus: CorpusSettings | None = None,
) -> LMDemoResult:
    """Run the language-model demo, write ``OUT/report.md`` and ``OUT/results.md``; returns what
    it measured.

    Args:
        seeds: seeds per arm (``0 .. seeds - 1``).
        quick: a tiny corpus and tiny models, a few steps per run (a smoke test).
        out: the demo's output directory (its previous run directories are replaced).
        workers: processes training runs in parallel (default: one per available CPU core,
            each with one thread; ``1`` trains in this process).
        echo: where progress lines go.
        publish: also write the results page (``OUT/results.md``) to :data:`RESULTS_FILE` of
            the torchkd checkout in the working directory (refused for ``quick`` runs and
            outside a checkout, before any training).
        corpus: which files (default :data:`~torchkd.demo.lm.plan.CORPUS`, or
            :data:`~torchkd.demo.lm.plan.QUICK_CORPUS` with ``quick``).
    """
    from safetensors.torch import save_file

    from torchkd.config import build_model, write_resolved_config
    from torchkd.demo.lm.metrics import evaluate_lm, top1_predictions

    for module in ("tokenizers", "transformers", "matplotlib"):  # before any training
        require(module, "demo", "torchkd demo lm")

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if publish:
        check_publishable(RESULTS_FILE, quick)
    started = time.perf_counter()
    out = Path(out)
    command = lm_demo_command(seeds, quick, out, workers)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan_lm_demo(corpus or (QUICK_CORPUS if quick else CORPUS), quick)
    check_vocabulary(plan, [plan.recipe("teacher"), plan.recipe("baseline")])
    cached = plan.teacher_weights.is_file()
    runs_total = len(LM_ARMS) * seeds
    if workers is None:
        workers = min(available_cpus(), runs_total + (not cached))
    threads = f"{workers} processes x {RUN_THREADS} thread" if workers > 1 else "in-process"
    echo(
        f"{len(plan.student_files)} + {len(plan.teacher_files)} standard-library files "
        f"(students + teacher), tokenizer {plan.tokenizer}; "
        f"{'reusing' if cached else 'training'} the teacher ({plan.teacher_weights}); "
        f"{runs_total} student runs ({len(LM_ARMS)} arms x {seeds} seeds), {workers} at a time"
    )
    predictions_path = out / "teacher_test_predictions.safetensors"
    runs: list[ArmRun] = []

    def submit(pool: concurrent.futures.Executor, key: str, measure: bool) -> list[Future[ArmRun]]:
        predictions = str(predictions_path) if measure else None
        return [
            pool.submit(
                train_lm_arm,
                key,
                seed,
                plan.overrides[key],
                str(out / key / f"seed{seed}"),
                predictions,
                not quick,
            )
            for seed in range(seeds)
        ]

    teacher_seconds = 0.0
    with executor(workers) as pool:
        try:
            baseline_jobs = []
            if not cached:
                teacher_job = pool.submit(
                    train_teacher, plan.overrides["teacher"], str(out / "teacher")
                )
                baseline_jobs = submit(pool, "baseline", measure=False)  # needs no teacher
                _, teacher_seconds = teacher_job.result()
                echo(f"teacher trained in {teacher_seconds:.0f} s")
            # the teacher's predictions on the test files: every arm's agreement reference
            teacher = build_model(plan.recipe("forward_kl").teacher, "teacher")
            loader = held_out_loader("baseline.yaml", plan.overrides["baseline"])
            with run_threads():
                predictions = top1_predictions(teacher, loader)
                save_file({"predictions": predictions.contiguous()}, str(predictions_path))
                jobs = [job for key in _DENSE_ARMS for job in submit(pool, key, measure=True)]
                if cached:
                    jobs += submit(pool, "baseline", measure=True)
                teacher_test = evaluate_lm(teacher, loader, predictions)
            # the top-k cache, written by `torchkd cache-teacher` from the cache arm's recipe
            recipe_file = write_resolved_config(plan.recipe("cache"), out / "cache_teacher")
            echo(f"torchkd cache-teacher {recipe_file} --dir {plan.topk_dir}")
            cache_stats = cache_teacher(recipe_file, plan.topk_dir, echo)
            jobs += submit(pool, "cache", measure=True)
            jobs += [
                pool.submit(measure_lm_run, job.result(), plan.overrides["baseline"],
                            str(predictions_path))
                for job in baseline_jobs
            ]  # fmt: skip
            for future in concurrent.futures.as_completed(jobs):
                run = future.result()
                runs.append(run)
                echo(
                    f"  {run.arm:<10} seed {run.seed}: test perplexity "
                    f"{run.test['perplexity']:7.2f}, agreement {run.test['agreement']:5.1f} % "
                    f"({run.seconds:.0f} s)"
                )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    order = [arm.key for arm in LM_ARMS]
    result = LMDemoResult(
        teacher_test=teacher_test,
        teacher_description=describe_lm(plan.recipe("teacher").student.kwargs["config"]),
        student_description=describe_lm(plan.recipe("baseline").student.kwargs["config"]),
        teacher_cached=cached,
        teacher_seconds=teacher_seconds,
        runs=sorted(runs, key=lambda run: (order.index(run.arm), run.seed)),
        seeds=list(range(seeds)),
        corpus=_corpus_summary(plan),
        cache=cache_stats,
        environment={**environment(), "threads": threads},
        teacher_weights=str(plan.teacher_weights),
        arm_terms={arm.key: _describe_arm(arm.recipe) for arm in LM_ARMS},
        command=command,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_lm_report(result, out, quick=quick)
    write_results(lm_results_markdown(result), out, RESULTS_FILE if publish else None, echo)
    return result
