"""Every distillation method of torchkd on MNIST-1D: one teacher, two students, two settings.

A wide 1-D CNN teacher (``configs/mnist1d/teacher.yaml``, trained once and cached) is distilled
into a narrow CNN of the same family and into an MLP (a different family: no spatial feature
maps, so the methods that need them — AT, NST, FSP, factor transfer — are marked n/a there).
Each method is its recipe in ``configs/mnist1d/`` (the MLP is the override
``student.model=mlp`` plus the tap paths in each :class:`~methods.rows.Method`'s
``mlp_overrides``), built with :func:`torchkd.config.build_from_recipe` and trained with
:func:`torchkd.train.fit`: the library's engine, not a loop of its own. Every run uses the same
optimizer, learning-rate schedule, batch size and number of optimizer steps
(:func:`~methods.rows.common_overrides`); the table reports the test top-1 of the final model
(no checkpoint selection). Training batches are drawn by
:class:`~methods.batches.MixedBatchSampler` (random permutations, 50-batch epochs) and built
whole by :class:`~methods.batches.RowBatches`, which is much cheaper than collating one sample
at a time.

Two settings:

- ``labeled``: batches of labeled MNIST-1D training samples (the 3600 left after the
  400-sample validation hold-out);
- ``transfer``: a quarter of every batch is labeled, three quarters are fresh unlabeled
  MNIST-1D samples from the transfer-set generator (:func:`torchkd.data.mnist1d_transfer_set`).
  Unlabeled rows carry the label ``-100`` (``ignore_index``): CE and DKD skip them, every
  other term (logit, feature and relation) uses all rows. The baseline cannot use unlabeled
  samples, so its transfer row is its labeled runs.

Two-stage methods (FitNets: hint stage then KD; factor transfer: paraphraser stage then
transfer) run their first stage for a quarter of the step budget before the full second stage.

``--group self`` is a table of its own (``methods_mnist1d_self.md``, its own recipe key, its
baseline rerun in it), CNN student only: BYOT (the top-1 of the deepest exit), SEED with
label-free KD, and born-again networks: the teacher's architecture distilled generation after
generation (``generations: 3``, one row per generation), measured against that architecture
trained alone with CE on the same steps and seeds.

Results go to ``benchmarks/results/methods_mnist1d.jsonl`` (one line per run and generation,
so partial runs add up) and the table to ``benchmarks/results/methods_mnist1d.md``.

This file is the command line; the rows, batches, runs, log and table are the modules of
``benchmarks/methods/`` (found through ``benchmarks/`` on ``sys.path``, as when run as a script).

Usage::

    .venv/bin/python benchmarks/methods_mnist1d.py                      # the full table
    .venv/bin/python benchmarks/methods_mnist1d.py --steps 3000 --methods baseline,kd
    .venv/bin/python benchmarks/methods_mnist1d.py --methods kd,crd --students mlp \
        --settings transfer --seeds 0,1
    .venv/bin/python benchmarks/methods_mnist1d.py --table-only         # re-render the table
    .venv/bin/python benchmarks/methods_mnist1d.py --group self --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from methods.jobs import Job, run_job, teacher_checkpoint, teacher_test_top1
from methods.log import config_key, read_log, table_path
from methods.rows import (
    BASELINES,
    BATCH_SIZE,
    GROUP_STUDENTS,
    GROUPS,
    LOG_PATH,
    METHODS,
    RESULTS,
    SELF_NOTES,
    SETTINGS,
    STEPS,
    TRANSFER_LABELED_PER_BATCH,
    TRANSFER_SAMPLES,
)
from methods.table import environment_lines, render_table, targets


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default="all",
        help="which table: all (methods_mnist1d.md) or self (self-distillation, SEED and "
        "born-again: methods_mnist1d_self.md)",
    )
    parser.add_argument("--methods", help="default: every method of --group")
    parser.add_argument("--students", help="default: every student of --group")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per run")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    args.methods = args.methods or ",".join(GROUPS[args.group])
    args.students = args.students or ",".join(GROUP_STUDENTS[args.group])
    choices = (
        ("methods", GROUPS[args.group]),
        ("students", GROUP_STUDENTS[args.group]),
        ("settings", SETTINGS),
    )
    for flag, allowed in choices:
        values = [v for v in getattr(args, flag).split(",") if v]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            parser.error(f"--{flag}: unknown {unknown}; choose from {list(allowed)}")
        setattr(args, flag, values)
    args.seeds = [int(seed) for seed in args.seeds.split(",") if seed]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/methods_mnist1d.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    started = time.perf_counter()
    key = config_key(args.steps, args.group)
    if not args.table_only:
        torch.set_num_threads(1)
        teacher = str(teacher_checkpoint())
        jobs = [
            Job(method, student, setting, seed, teacher, args.steps, args.group)
            for seed in args.seeds
            for setting in args.settings
            for student in args.students
            for method in args.methods
            if not (student == "mlp" and METHODS[method].cnn_only)
            and not (student == "mlp" and METHODS[method].teacher_architecture)
            and not (method in BASELINES and setting == "transfer")
        ]
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futures = {pool.submit(run_job, job): job for job in jobs}
            for count, future in enumerate(as_completed(futures), start=1):
                for record in future.result():
                    with LOG_PATH.open("a") as stream:
                        stream.write(json.dumps(record) + "\n")
                    generation = f" gen {record['generation']}" if "generation" in record else ""
                    print(
                        f"[{count}/{len(jobs)}] {record['method']}{generation} "
                        f"{record['student']} {record['setting']} seed {record['seed']}: "
                        f"{record['test_top1']:.1f}% ({record['seconds']:.1f} s, "
                        f"{time.perf_counter() - started:.0f} s total)",
                        flush=True,
                    )
        invocation = {
            "kind": "invocation",
            "command": command,
            "seconds": time.perf_counter() - started,
            "runs": len(jobs),
            "teacher_test_top1": teacher_test_top1(Path(teacher)),
            "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
            "config": key,
        }
        with LOG_PATH.open("a") as stream:
            stream.write(json.dumps(invocation) + "\n")
    runs, invocations = read_log(key)
    produced_by = [
        f"- `{record['command']}`: {record['runs']} runs in {record['seconds'] / 60:.1f} min "
        f"wall time (finished {record['finished']}; teacher test top-1 "
        f"{record['teacher_test_top1']:.1f}%)"
        for record in invocations
    ]
    title = {"all": "Distillation methods", "self": "Self-distillation, SEED and born-again"}
    header = [
        f"# {title[args.group]} on MNIST-1D",
        "",
        "Written by `benchmarks/methods_mnist1d.py` (see its docstring for the protocol).",
        "",
        "Produced by (each invocation's exact command and total wall time):",
        "",
        *(produced_by or ["- (no finished invocation logged)"]),
        "",
        *environment_lines(),
        f"- recipe key {key}: {args.steps} Adam steps (lr 0.01, cosine), batch "
        f"{BATCH_SIZE}; transfer setting: {TRANSFER_LABELED_PER_BATCH} labeled + "
        f"{BATCH_SIZE - TRANSFER_LABELED_PER_BATCH} "
        f"unlabeled rows per batch from {TRANSFER_SAMPLES} fresh samples",
        "- test top-1 of the final model on the 1000 MNIST-1D test samples; paired diff = "
        "mean ± std over seeds of (method − baseline) with the same seed; wins = seeds where "
        "the method beats the baseline",
    ]
    if args.group == "self":
        header += SELF_NOTES
    path = table_path(args.steps, args.group)
    goals = targets(runs) if args.group == "all" else []
    path.write_text(render_table(runs, header, args.group) + "\n".join(goals) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
