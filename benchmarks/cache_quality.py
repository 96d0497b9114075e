"""Teacher-cache quality at equal storage: top-k (biased) against sampled (unbiased) caches.

On the synthetic teachers of ``benchmarks/topk_error.py`` (V = 32,000, float64: a Zipf prior
plus context logits, broad and peaked; the student is the same projection on perturbed hidden
states), the forward-KL :func:`torchkd.losses.fused_linear_kd_loss` with the teacher as the
cache stores it is compared with the loss of the dense teacher: the relative error of the loss
value and of the gradient w.r.t. the student's hidden states.

* top-k (``k`` in 8, 16, 32, 64): :class:`TopKLogits` with the exact tail, log-probabilities and
  tail rounded to float16 as the cache stores them. Deterministic: its error is its bias.
* sampled (``N`` in 4, 12, 32, and the ``N`` whose bytes/token match each top-k size):
  :class:`SampledLogits` of ``N`` draws per position (Anshumann et al., ACL 2025). The *spread*
  is the mean error of one draw (over ``--draws`` seeded draws); the *bias* is the error of the
  mean estimate over ``D`` draws. The estimate is linear in the counts, so the mean over ``D``
  independent draws of ``N`` is exactly the estimate of their pooled ``D N`` draws, which is
  how it is computed (one loss call). An unbiased estimator's bias shrinks as ``spread / √D``;
  a biased one's stays.
* top-k plus samples combined (``kind: sampled`` with ``k``): an exact top-``k/4`` head
  (float32) and the ``N`` draws from the rest that fill top-k's bytes/token; unbiased too.

Bytes/token are the cache's (:func:`~torchkd.lm.cache.bytes_per_token`,
:func:`~torchkd.lm.cache.sampled_bytes_per_token`). Nothing is timed. Usage::

    .venv/bin/python benchmarks/cache_quality.py   # writes benchmarks/results/cache_quality.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from topk_error import DISTRIBUTIONS, entropy, make_problem, relative
from torch import Tensor

from torchkd.lm.cache import bytes_per_token, sampled_bytes_per_token
from torchkd.losses import SampledLogits, TopKLogits, fused_linear_kd_loss

RESULTS = Path(__file__).parent / "results" / "cache_quality.md"
KS = (8, 16, 32, 64)
SAMPLES = (4, 12, 32)
POOLED = (200, 2000)  # D: draws whose mean estimate gives the bias


def loss_and_grad(student_hidden: Tensor, weight: Tensor, bias: Tensor, teacher: object):
    """The loss and its gradients w.r.t. the student's hidden states and output weight."""
    hidden = student_hidden.clone().requires_grad_()
    student_weight = weight.clone().requires_grad_()
    loss = fused_linear_kd_loss(hidden, student_weight, teacher_logits=teacher, student_bias=bias)
    hidden_grad, weight_grad = torch.autograd.grad(loss, [hidden, student_weight])
    return loss.item(), hidden_grad, weight_grad


def errors(estimate: tuple, dense: tuple) -> tuple[float, float, float]:
    """Relative errors of the loss, the hidden-state and the weight gradient."""
    loss_error = abs(estimate[0] - dense[0]) / abs(dense[0])
    return loss_error, relative(estimate[1], dense[1]), relative(estimate[2], dense[2])


def cell(values: tuple[float, ...]) -> str:
    return " / ".join(f"{value:.4f}" for value in values)


def stored_topk(teacher: Tensor, k: int) -> TopKLogits:
    """The top-k teacher as the cache holds it: float16 log-probabilities and tail."""
    exact = TopKLogits.from_logits(teacher, k)
    low = torch.finfo(torch.float16).min
    log_probs = exact.log_probs.clamp_min(low).to(torch.float16).double()
    return TopKLogits(exact.token_ids, log_probs, exact.tail_log_mass.to(torch.float16).double())


def sampled(teacher: Tensor, samples: int, seed: int, head: int = 0) -> SampledLogits:
    """``samples`` seeded draws per row (from outside an exact top-``head``); the entropy and
    the head in float32, as the cache holds them."""
    draw = SampledLogits.from_logits(
        teacher, samples, generator=torch.Generator().manual_seed(seed), k=head
    )
    exact = None
    if draw.head is not None:
        log_probs, tail = (
            t.float().double() for t in (draw.head.log_probs, draw.head.tail_log_mass)
        )
        exact = TopKLogits(draw.head.token_ids, log_probs, tail)
    return SampledLogits(draw.token_ids, draw.counts, draw.entropy.float().double(), exact)


def equal_bytes(k: int, vocab: int, head: int = 0) -> int:
    """The ``N`` whose sampled bytes/token (with an exact top-``head``) are closest to top-k's
    at ``k``."""
    target = bytes_per_token(k, vocab)
    return min(
        range(1, 4 * k),
        key=lambda n: abs(sampled_bytes_per_token(n, vocab, head or None) - target),
    )


def sampled_cells(student_hidden, weight, bias, teacher, dense, n, head, draws) -> str:
    """Spread (mean error of ``draws`` single draws) and bias (error of the mean of ``D``
    draws, for each ``D`` in ``POOLED``) of the sampled cache of ``n`` draws."""

    def error(estimate: SampledLogits) -> tuple[float, float, float]:
        return errors(loss_and_grad(student_hidden, weight, bias, estimate), dense)

    single = [error(sampled(teacher, n, seed, head)) for seed in range(draws)]
    spread = tuple(sum(column) / len(single) for column in zip(*single, strict=True))
    # seeds past the single draws': independent of them
    pooled = [cell(error(sampled(teacher, n * d, draws + d, head))) for d in POOLED]
    return f"{cell(spread)} | " + " | ".join(pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--draws", type=int, default=20, help="single draws for the spread")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    samples = sorted({*SAMPLES, *(equal_bytes(k, args.vocab) for k in KS)})
    pooled = " | ".join(f"bias D={d}" for d in POOLED)
    lines = [
        f"| teacher | cache | bytes/token | spread (1 draw) | {pooled} |",
        "|---|---|---:|---:|" + "---:|" * len(POOLED),
    ]
    paired = []
    for name, (zipf, spread) in DISTRIBUTIONS.items():
        student_hidden, weight, bias, teacher = make_problem(
            args.rows, args.hidden, args.vocab, zipf, spread
        )
        dense = loss_and_grad(student_hidden, weight, bias, teacher)
        label = f"{name}, H = {entropy(teacher):.2f}"
        rows: dict[str, tuple[int, str]] = {}
        for k in KS:
            error = errors(
                loss_and_grad(student_hidden, weight, bias, stored_topk(teacher, k)), dense
            )
            size = bytes_per_token(k, args.vocab)
            bias_cells = " | ".join(cell(error) for _ in POOLED)
            rows[f"top-{k}"] = (size, f"— | {bias_cells}")
        for n in samples:
            size = sampled_bytes_per_token(n, args.vocab)
            cells = sampled_cells(student_hidden, weight, bias, teacher, dense, n, 0, args.draws)
            rows[f"sampled N={n}"] = (size, cells)
        for k in KS:  # an exact head of k / 4 tokens, samples for the rest of top-k's bytes
            head = k // 4
            n = equal_bytes(k, args.vocab, head)
            size = sampled_bytes_per_token(n, args.vocab, head)
            cells = sampled_cells(student_hidden, weight, bias, teacher, dense, n, head, args.draws)
            rows[f"top-{head} + sampled N={n}"] = (size, cells)
        for cache, (size, cells) in sorted(rows.items(), key=lambda item: item[1][0]):
            lines.append(f"| {label} | {cache} | {size} | {cells} |")
            print(lines[-1], flush=True)
        for k in KS:
            head = k // 4
            pair = [
                f"top-{k}",
                f"sampled N={equal_bytes(k, args.vocab)}",
                f"top-{head} + sampled N={equal_bytes(k, args.vocab, head)}",
            ]
            for cache in pair:
                size, cells = rows[cache]
                paired.append(f"| {label} | {cache} ({size} B) | {cells} |")
    command = "python benchmarks/cache_quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = [
        "# Teacher caches against the dense teacher: top-k (biased) and sampled (unbiased)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"{args.rows} tokens, hidden size {args.hidden}, V = {args.vocab}, float64, T = 1, "
        "forward KL; the teachers of `benchmarks/topk_error.py` (H: mean teacher entropy in "
        "nats). Each cell is the relative error of the loss value / of the gradient w.r.t. the "
        "student's hidden states (one per token) / of the gradient w.r.t. its output weight (a "
        "sum over the tokens), against the dense teacher's. The student is close to the "
        "teacher (p − q small), so one draw's noise q̂ − q is large next to the gradient "
        "p − q: training averages it over steps, as the bias columns average it over draws. "
        "Spread: mean error of one "
        f"sampled draw ({args.draws} seeded draws). Bias: error of the mean estimate over D "
        "draws (computed exactly as one estimate of the D·N pooled draws: the estimate is "
        "linear in the counts); it falls as spread / √D for the sampled cache (unbiased), "
        "while top-k's error is its bias whatever D (it has no spread: '—'). 'top-k + sampled "
        "N': an exact head of k tokens and N draws from the rest (unbiased too). Top-k holds "
        "float16 log-probabilities and tail, sampled a float32 entropy (and head), as the cache "
        "does.",
        "",
        "## Every cache, by bytes/token",
        "",
        *lines,
        "",
        "## Paired at (about) equal bytes/token",
        "",
        f"| teacher | cache | spread (1 draw) | {pooled} |",
        "|---|---|---:|" + "---:|" * len(POOLED),
        *paired,
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
