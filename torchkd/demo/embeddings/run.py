"""``torchkd demo embeddings``: every arm at every seed, the teacher, the metrics and the speed."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from torchkd._extras import require
from torchkd.demo.embeddings.arms import (
    ARMS,
    QUICK_OVERRIDES,
    Encoded,
    arm_recipe,
    encode_student,
    encode_teacher,
    held_out_batches,
)
from torchkd.demo.embeddings.metrics import (
    neighbour_overlap,
    pair_similarities,
    sentences_per_second,
    spearman,
)
from torchkd.demo.embeddings.report import (
    EmbeddingsResult,
    RunScores,
    results_markdown,
    write_report,
)
from torchkd.demo.run import check_publishable, write_results
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment

__all__ = ["RESULTS_FILE", "run_embeddings_demo"]

Echo = Callable[[str], None]

RESULTS_FILE = Path("benchmarks") / "results" / "demo_embeddings.md"
NEIGHBOURS = 10
SPEED_SENTENCES = 256
SPEED_REPEATS = 5


def _command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    words = ["torchkd demo embeddings", f"--seeds {seeds}"] + (["--quick"] if quick else [])
    return " ".join(words + [f"--out {out}"] + ([f"--workers {workers}"] if workers else []))


def _scores(student: Encoded, teacher: Encoded, teacher_pairs: torch.Tensor) -> RunScores:
    return RunScores(
        arm=student.arm,
        seed=student.seed,
        spearman=spearman(pair_similarities(student.embeddings), teacher_pairs),
        overlap=neighbour_overlap(student.embeddings, teacher.embeddings, NEIGHBOURS),
        seconds=student.seconds,
        cached=student.cached,
        history=student.history,
    )


def _speed(overrides: Sequence[str], quick: bool) -> dict[str, float]:
    """Sentences/s of the teacher and the student architecture (the truncated teacher: every
    student has its shape), interleaved, one thread."""
    from torchkd.config import build_model

    recipe = arm_recipe(ARMS[1], 0, overrides)
    assert recipe.teacher is not None
    batches = held_out_batches(recipe)
    rows = 0
    kept = []
    for batch in batches:  # the first SPEED_SENTENCES held-out sentences
        if rows >= SPEED_SENTENCES:
            break
        kept.append(batch)
        rows += len(batch["index"])
    models = {
        "teacher": build_model(recipe.teacher, "teacher"),
        "student": build_model(recipe.student),
    }
    with run_threads():
        return sentences_per_second(models, kept, repeats=2 if quick else SPEED_REPEATS)


def run_embeddings_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo_embeddings",
    workers: int | None = None,
    echo: Echo = print,
    publish: bool = False,
    overrides: Sequence[str] = (),
) -> EmbeddingsResult:
    """Distil all-MiniLM-L6-v2 into 3-layer students; write ``OUT/report.md``, ``OUT/results.md``.

    Args:
        seeds: seeds per arm (``0 .. seeds - 1``).
        quick: a few steps on a few sentences (a smoke test, not a result).
        out: output directory (its run directories from a previous demo are replaced).
        workers: processes running jobs in parallel, one torch thread each (default: one
            per available CPU core; ``1`` runs them in this process).
        echo: where progress lines go.
        publish: also write the results page (``OUT/results.md``) to :data:`RESULTS_FILE` of
            the torchkd checkout in the working directory (refused for ``quick`` runs and
            outside a checkout, before any training).
        overrides: more recipe overrides for every run (e.g. a local model directory).
    """
    from torchkd.demo.embeddings.models import model_dir

    for module in ("transformers", "matplotlib"):  # before any training
        require(module, "demo", "torchkd demo embeddings")

    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if publish:
        check_publishable(RESULTS_FILE, quick)
    if not any(word.startswith("teacher.kwargs.path=") for word in overrides):
        model_dir()  # a missing model package fails here, saying how to install it
    started = time.perf_counter()
    out = Path(out)
    command = _command(seeds, quick, out, workers)
    overrides = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    jobs = [(arm.key, seed) for arm in ARMS[::-1] for seed in (range(seeds) if arm.seeded else [0])]
    if workers is None:
        workers = min(available_cpus(), len(jobs) + 1)
    echo(
        f"{len(jobs)} student jobs ({', '.join(arm.key for arm in ARMS)}; {seeds} seeds) and "
        f"the teacher, {workers} at a time, {RUN_THREADS} thread each"
    )
    encoded: list[Encoded] = []
    with executor(workers) as pool:
        try:
            futures = [
                pool.submit(encode_student, key, seed, overrides, str(out / key / f"seed{seed}"))
                for key, seed in jobs
            ]
            futures.append(pool.submit(encode_teacher, overrides))
            for future in concurrent.futures.as_completed(futures):
                job = future.result()
                encoded.append(job)
                source = " (cached weights)" if job.cached else ""
                echo(f"  {job.arm:<10} seed {job.seed}: {job.seconds:.0f} s{source}")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    teacher = next(job for job in encoded if job.arm == "teacher")
    teacher_pairs = pair_similarities(teacher.embeddings)
    scores = [_scores(job, teacher, teacher_pairs) for job in encoded if job.arm != "teacher"]
    echo("timing teacher and student (interleaved, one thread)")
    speed = _speed(overrides, quick)
    recipe = arm_recipe(ARMS[-1], 0, overrides)
    result = EmbeddingsResult(
        scores=sorted(scores, key=lambda score: (score.arm, score.seed)),
        seeds=list(range(seeds)),
        speed=speed,
        held_out=len(teacher.embeddings),
        train_sentences=recipe.data.kwargs.get("train_sentences"),
        student=recipe.student.kwargs,
        terms=[term.model_dump(mode="json") for term in recipe.terms],
        environment={**environment(), "threads": f"{workers} processes x {RUN_THREADS} thread"},
        command=command,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_report(result, out, quick=quick)
    write_results(results_markdown(result), out, RESULTS_FILE if publish else None, echo)
    return result
