"""``torchkd demo cross_tokenizer``: the students' tokenizer, the LM demo's teacher (reused from
its cache, or trained first), then every arm at every seed, measured in bits per character."""

from __future__ import annotations

import concurrent.futures
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd._extras import require
from torchkd.demo.arms import ArmRun
from torchkd.demo.cross_tokenizer.report import (
    XTOK_ARMS,
    XTokResult,
    write_xtok_report,
    xtok_results_markdown,
)
from torchkd.demo.lm.corpus import demo_tokenizer, training_files
from torchkd.demo.lm.plan import (
    CORPUS,
    QUICK_CORPUS,
    QUICK_MODEL,
    QUICK_OVERRIDES,
    describe_lm,
    plan_lm_demo,
)
from torchkd.demo.lm.teacher import corpus_overrides, train_teacher
from torchkd.demo.run import check_publishable, describe_terms, write_results
from torchkd.demo.workers import RUN_THREADS, executor, run_threads
from torchkd.environment import available_cpus, environment

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from torchkd.config import Recipe

__all__ = ["RESULTS_FILE", "evaluate_text", "run_xtok_demo", "train_xtok_arm"]

Echo = Callable[[str], None]

RESULTS_FILE = Path("benchmarks") / "results" / "demo_cross_tokenizer.md"
_QUICK_STUDENT_VOCAB = 300  # --quick: the LM demo's quick teacher has 320 tokens
_QUICK_STUDENT_DATA = ("data.kwargs.test_fraction=0.2",)


def _recipe(name: str, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe ``name`` of ``torchkd/configs/demo_cross_tokenizer/`` with ``overrides``."""
    from torchkd.config import load_recipe

    path = Path(str(resources.files("torchkd") / "configs" / "demo_cross_tokenizer" / name))
    return load_recipe(path, ["train.progress=false", *overrides])


def _test_loader(overrides: Sequence[str]) -> DataLoader:
    """The test split (held-out files) of the student's data, its own tokens, in order."""
    from torchkd.config import build_loaders

    loaders = build_loaders(_recipe("baseline.yaml", overrides).data, splits=["test"])
    assert loaders.test is not None
    return loaders.test


def evaluate_text(
    model: nn.Module, loader: Iterable[Mapping[str, Any]], tokenizer: str | Path
) -> dict[str, float]:
    r""":func:`~torchkd.demo.lm.metrics.evaluate_lm`'s metrics of ``model`` on its own tokens,
    plus ``characters`` (:math:`C`, those of the labeled next tokens, decoded by
    ``tokenizer``, special tokens left out) and the bits per character
    :math:`\mathrm{bpc} = N \cdot \mathrm{nll} / (C \ln 2)`, :math:`N` the labeled tokens."""
    from torchkd.data.tokenizer import load_tokenizer
    from torchkd.demo.lm.metrics import evaluate_lm
    from torchkd.lm import IGNORE_INDEX

    metrics = evaluate_lm(model, loader)
    decoder = load_tokenizer(tokenizer)
    characters = 0
    for batch in loader:
        for row in batch["labels"]:
            ids = row[row != IGNORE_INDEX].tolist()
            characters += len(decoder.decode(ids, skip_special_tokens=True))
    if characters == 0:
        raise ValueError("evaluate_text: the labeled tokens decode to no character")
    metrics["characters"] = float(characters)
    metrics["bpc"] = metrics["nll"] * metrics["tokens"] / (characters * math.log(2))
    return metrics


def train_xtok_arm(
    arm_key: str, seed: int, overrides: Sequence[str], test_overrides: Sequence[str],
    run_dir: str, tokenizer: str, run_report: bool = True,
) -> ArmRun:  # fmt: skip
    """Train one arm's recipe at ``seed`` into ``run_dir`` (a fresh directory) with one torch
    thread, then measure its final student on the test files (:func:`evaluate_text`)."""
    from torchkd.config import build_model, fit_recipe

    arm = next(arm for arm in XTOK_ARMS if arm.key == arm_key)
    recipe = _recipe(arm.recipe, [*overrides, f"train.seed={seed}"])
    if Path(run_dir).exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    with run_threads():
        fit_recipe(recipe, run_dir, evaluate_test=False, report=run_report)
        seconds = time.perf_counter() - started
        last = str(Path(run_dir) / "checkpoints" / "last.pt")
        student = build_model(recipe.student.model_copy(update={"checkpoint": last}))
        test = evaluate_text(student, _test_loader(test_overrides), tokenizer)
    return ArmRun(arm_key, seed, test, [], seconds, run_dir)


@dataclass(frozen=True)
class _Plan:
    teacher_overrides: list[str]  # the LM demo's teacher recipe
    teacher_weights: Path
    teacher_tokenizer: Path
    student_tokenizer: Path
    student_vocab: int
    overrides: dict[str, list[str]]  # per arm key; "test": the test split's


def _plan(quick: bool) -> _Plan:
    """The LM demo's plan (corpus, teacher tokenizer, teacher), the students' tokenizer
    (trained on their training files) and every arm's overrides."""
    lm = plan_lm_demo(QUICK_CORPUS if quick else CORPUS, quick)
    model = {**QUICK_MODEL, "vocab_size": _QUICK_STUDENT_VOCAB}
    student_quick = [*QUICK_OVERRIDES, *_QUICK_STUDENT_DATA] if quick else []
    student_quick += [f"student.kwargs.config.{k}={v}" for k, v in model.items()] if quick else []
    bare = _recipe("baseline.yaml", student_quick)
    vocab = int(bare.student.kwargs["config"]["vocab_size"])
    tokenizer = demo_tokenizer(training_files(lm.student_files, bare.data), vocab)
    students = [*corpus_overrides(lm.student_files, tokenizer), *student_quick]
    teacher = [
        f"data.kwargs.teacher_tokenizer={json.dumps(str(lm.tokenizer))}",
        f"teacher.checkpoint={json.dumps(str(lm.teacher_weights))}",
        *([f"teacher.kwargs.config.{k}={v}" for k, v in QUICK_MODEL.items()] if quick else []),
    ]
    overrides = {"test": students, "baseline": students}
    overrides.update({arm.key: [*students, *teacher] for arm in XTOK_ARMS[1:]})
    return _Plan(
        lm.overrides["teacher"], lm.teacher_weights, lm.tokenizer, tokenizer, vocab, overrides
    )


def xtok_demo_command(seeds: int, quick: bool, out: Path, workers: int | None) -> str:
    """The ``torchkd demo cross_tokenizer`` command line that repeats a run."""
    words = ["torchkd demo cross_tokenizer", f"--seeds {seeds}"] + (["--quick"] if quick else [])
    return " ".join(words + [f"--out {out}"] + ([f"--workers {workers}"] if workers else []))


def run_xtok_demo(
    seeds: int = 3,
    quick: bool = False,
    out: str | Path = "runs/demo_cross_tokenizer",
    workers: int | None = None,
    echo: Echo = print,
    publish: bool = False,
) -> XTokResult:
    """Run the cross-tokenizer demo; writes ``OUT/report.md`` and ``OUT/results.md`` (with
    ``publish``, also :data:`RESULTS_FILE` of the checkout in the working directory).

    Args:
        seeds: seeds per arm (``0 .. seeds - 1``).
        quick: the LM demo's tiny corpus and models, a few steps per run (a smoke test).
        out: the output directory (its previous run directories are replaced).
        workers: processes training in parallel (default: one per available CPU core).
        echo: where progress lines go.
        publish: also write the results page to :data:`RESULTS_FILE` (refused for ``quick``).
    """
    from torchkd.config import build_model
    from torchkd.data.shared_vocabulary import shared_vocabulary
    from torchkd.data.tokenizer import load_tokenizer
    from torchkd.demo.lm.arms import held_out_loader

    for module in ("tokenizers", "transformers"):
        require(module, "demo", "torchkd demo cross_tokenizer")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if publish:
        check_publishable(RESULTS_FILE, quick)
    started = time.perf_counter()
    out = Path(out)
    command = xtok_demo_command(seeds, quick, out, workers)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(quick)
    cached = plan.teacher_weights.is_file()
    workers = workers or min(available_cpus(), len(XTOK_ARMS) * seeds)
    echo(
        f"students' tokenizer {plan.student_tokenizer} ({plan.student_vocab} tokens), "
        f"teacher's {plan.teacher_tokenizer}; {'reusing' if cached else 'training'} the "
        f"teacher ({plan.teacher_weights}); {len(XTOK_ARMS) * seeds} runs, {workers} at a time"
    )
    teacher_seconds = 0.0
    runs: list[ArmRun] = []
    with executor(workers) as pool:

        def submit(keys: Iterable[str]) -> list[concurrent.futures.Future[ArmRun]]:
            return [
                pool.submit(
                    train_xtok_arm,
                    key,
                    seed,
                    plan.overrides[key],
                    plan.overrides["test"],
                    str(out / key / f"seed{seed}"),
                    str(plan.student_tokenizer),
                    not quick,
                )
                for key in keys
                for seed in range(seeds)
            ]

        try:
            jobs = submit(["baseline"])  # needs no teacher
            if not cached:
                _, teacher_seconds = pool.submit(
                    train_teacher, plan.teacher_overrides, str(out / "teacher")
                ).result()
                echo(f"teacher trained in {teacher_seconds:.0f} s")
            jobs += submit(arm.key for arm in XTOK_ARMS[1:])
            teacher_recipe = _recipe("uld.yaml", plan.overrides["uld"])
            lm_test = [o for o in plan.overrides["test"] if "data.kwargs.tokenizer" not in o]
            lm_test.append(f"data.kwargs.tokenizer={json.dumps(str(plan.teacher_tokenizer))}")
            with run_threads():
                teacher = build_model(teacher_recipe.teacher, "teacher")
                loader = held_out_loader("baseline.yaml", lm_test)
                teacher_test = evaluate_text(teacher, loader, plan.teacher_tokenizer)
            for future in concurrent.futures.as_completed(jobs):
                run = future.result()
                runs.append(run)
                echo(
                    f"  {run.arm:<8} seed {run.seed}: perplexity {run.test['perplexity']:8.2f}, "
                    f"{run.test['bpc']:.3f} bits/char ({run.seconds:.0f} s)"
                )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    student = load_tokenizer(plan.student_tokenizer)
    order = [arm.key for arm in XTOK_ARMS]
    runs.sort(key=lambda run: (order.index(run.arm), run.seed))
    source = (
        f"reused from the cache, `{plan.teacher_weights.name}`"
        if cached
        else f"trained in this run ({teacher_seconds:.0f} s), then cached"
    )
    result = XTokResult(
        teacher_test=teacher_test,
        teacher_description=describe_lm(teacher_recipe.teacher.kwargs["config"]),
        student_description=describe_lm(teacher_recipe.student.kwargs["config"]),
        runs=runs,
        seeds=list(range(seeds)),
        setup={
            "teacher_vocab": len(load_tokenizer(plan.teacher_tokenizer)),
            "student_vocab": len(student),
            "shared": len(shared_vocabulary(student, load_tokenizer(plan.teacher_tokenizer))),
            "characters": int(runs[0].test["characters"]),
            "student_tokens": int(runs[0].test["tokens"]),
            "teacher_tokens": int(teacher_test["tokens"]),
            "teacher_source": source,
        },
        arm_terms={
            arm.key: describe_terms(_recipe(arm.recipe, plan.overrides[arm.key]))
            for arm in XTOK_ARMS
        },
        environment={**environment(), "threads": f"{workers} processes x {RUN_THREADS} thread"},
        command=command,
    )
    result.seconds = time.perf_counter() - started
    write_xtok_report(result, out, quick)
    write_results(
        xtok_results_markdown(result, quick), out, RESULTS_FILE if publish else None, echo
    )
    return result
