"""``torchkd demo crossmodal``: every arm at every seed, the teacher's docstring embeddings,
the retrieval scores and the report."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torchkd._extras import require
from torchkd.demo.crossmodal.arms import (
    ARMS,
    QUICK_OVERRIDES,
    Encoded,
    arm_recipe,
    encode_arm,
    encode_teacher,
)
from torchkd.demo.crossmodal.metrics import retrieval_scores
from torchkd.demo.crossmodal.report import (
    CrossModalResult,
    RunScores,
    results_markdown,
    write_report,
)
from torchkd.demo.run import check_publishable, write_results
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment

__all__ = ["RESULTS_FILE", "run_crossmodal_demo"]

Echo = Callable[[str], None]

RESULTS_FILE = Path("benchmarks") / "results" / "demo_crossmodal.md"


def _command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    words = ["torchkd demo crossmodal", f"--seeds {seeds}"] + (["--quick"] if quick else [])
    return " ".join(words + [f"--out {out}"] + ([f"--workers {workers}"] if workers else []))


def _scores(job: Encoded, teacher_docs: Encoded) -> RunScores:
    docs = job.docs if job.docs is not None else teacher_docs.code
    scores = retrieval_scores(job.code, docs)
    return RunScores(job.arm, job.seed, seconds=job.seconds, history=job.history, **scores)


def run_crossmodal_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo_crossmodal",
    workers: int | None = None,
    echo: Echo = print,
    publish: bool = False,
    overrides: Sequence[str] = (),
) -> CrossModalResult:
    """Distil a docstring teacher into a code student; write ``OUT/report.md`` and
    ``OUT/results.md``.

    Args:
        seeds: seeds per seeded arm (``0 .. seeds - 1``).
        quick: a few steps on a few pairs (a smoke test, not a result).
        out: output directory (its run directories from a previous demo are replaced).
        workers: processes running jobs in parallel, one torch thread each (default: one
            per available CPU core; ``1`` runs them in this process).
        echo: where progress lines go.
        publish: also write the results page to :data:`RESULTS_FILE` of the torchkd checkout
            in the working directory (refused for ``quick`` runs, before any training).
        overrides: more recipe overrides for every run (e.g. a local teacher directory).
    """
    from torchkd.config import build_datasets
    from torchkd.demo.embeddings.models import model_dir

    for module in ("transformers", "scipy"):  # before any training
        require(module, "demo", "torchkd demo crossmodal")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if publish:
        check_publishable(RESULTS_FILE, quick)
    if not any(word.startswith("data.kwargs.teacher_dir=") for word in overrides):
        model_dir()  # a missing model package fails here, saying how to install it
    started = time.perf_counter()
    out = Path(out)
    command = _command(seeds, quick, out, workers)
    overrides = [*(QUICK_OVERRIDES if quick else ()), *overrides]
    jobs = [(arm.key, seed) for arm in ARMS[::-1] for seed in (range(seeds) if arm.seeded else [0])]
    if workers is None:
        workers = min(available_cpus(), len(jobs) + 1)
    echo(
        f"{len(jobs)} jobs ({', '.join(arm.key for arm in ARMS)}; {seeds} seeds) and the "
        f"teacher's docstring embeddings, {workers} at a time, {RUN_THREADS} thread each"
    )
    with run_threads():  # the teacher's embeddings, computed once here for every job
        train_pairs = len(
            build_datasets(arm_recipe(0, overrides).data, ["train", "val", "test"])["train"]
        )
    encoded: list[Encoded] = []
    with executor(workers) as pool:
        try:
            futures = [
                pool.submit(encode_arm, key, seed, overrides, str(out / key / f"seed{seed}"))
                for key, seed in jobs
            ]
            futures.append(pool.submit(encode_teacher, overrides))
            for future in concurrent.futures.as_completed(futures):
                job = future.result()
                encoded.append(job)
                echo(f"  {job.arm:<12} seed {job.seed}: {job.seconds:.0f} s")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    teacher = next(job for job in encoded if job.arm == "teacher")
    scores = [_scores(job, teacher) for job in encoded if job.arm != "teacher"]
    recipe = arm_recipe(0, overrides)
    result = CrossModalResult(
        scores=sorted(scores, key=lambda score: (score.arm, score.seed)),
        seeds=list(range(seeds)),
        held_out=len(teacher.code),
        train_pairs=train_pairs,
        student=recipe.student.kwargs,
        terms=[term.model_dump(mode="json") for term in recipe.terms],
        epochs=recipe.train.epochs,
        environment={**environment(), "threads": f"{workers} processes x {RUN_THREADS} thread"},
        command=command,
    )
    result.seconds = time.perf_counter() - started
    result.report_path = write_report(result, out, quick=quick)
    write_results(results_markdown(result), out, RESULTS_FILE if publish else None, echo)
    return result
