"""How the sparse top-k teacher's loss and gradient approach the dense ones as k grows.

A realistic teacher over V = 32,000 tokens: logits ``h W^T + b`` whose bias is a Zipf prior over
token frequency (``b_j = -s log rank_j``, as a language model's unigram component) and whose
context part ``h W^T`` has a chosen spread (the larger, the more peaked the rows). The student
shares ``W`` and ``b`` and sees perturbed hidden states, so it is close to the teacher but not
equal (as in the middle of distillation). For ``k`` in 8, 32, 128, 512 the table compares
:func:`torchkd.losses.fused_linear_kd_loss` with the teacher as :class:`TopKLogits` (the exact
tail mass as the extra bucket, and renormalized top-k without a tail) against the same loss with
the dense teacher logits: relative error of the loss, and of the student's hidden-state and
weight gradients (relative L2 error and cosine). Usage::

    .venv/bin/python benchmarks/topk_error.py        # writes benchmarks/results/topk_error.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from torch import Tensor

from torchkd.losses import TopKLogits, fused_linear_kd_loss

RESULTS = Path(__file__).parent / "results" / "topk_error.md"
KS = (8, 32, 128, 512)
# name -> (Zipf exponent of the prior, spread of the context logits)
DISTRIBUTIONS = {
    "broad (zipf 1.0, spread 2)": (1.0, 2.0),
    "peaked (zipf 1.1, spread 5)": (1.1, 5.0),
}
DIVERGENCES = (("forward_kl", 0.5), ("jsd", 0.5))


def make_problem(rows: int, hidden: int, vocab: int, zipf: float, spread: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.randperm(vocab, generator=generator).double() + 1
    bias = -zipf * ranks.log()
    weight = torch.randn(vocab, hidden, generator=generator, dtype=torch.float64)
    weight *= spread / hidden**0.5
    teacher_hidden = torch.randn(rows, hidden, generator=generator, dtype=torch.float64)
    noise = torch.randn(rows, hidden, generator=generator, dtype=torch.float64)
    student_hidden = teacher_hidden + 0.5 * noise
    teacher_logits = teacher_hidden @ weight.T + bias
    return student_hidden, weight, bias, teacher_logits


def loss_and_grads(
    student_hidden: Tensor,
    weight: Tensor,
    bias: Tensor,
    teacher: object,
    divergence: str,
    beta: float,
) -> tuple[float, Tensor, Tensor]:
    hidden = student_hidden.clone().requires_grad_()
    student_weight = weight.clone().requires_grad_()
    loss = fused_linear_kd_loss(
        hidden,
        student_weight,
        teacher_logits=teacher,
        student_bias=bias,
        divergence=divergence,
        beta=beta,
    )
    loss.backward()
    return loss.item(), hidden.grad, student_weight.grad


def relative(approximate: Tensor, exact: Tensor) -> float:
    return float((approximate - exact).norm() / exact.norm())


def cosine(first: Tensor, second: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(first.flatten(), second.flatten(), dim=0))


def entropy(logits: Tensor) -> float:
    log_probs = torch.log_softmax(logits, dim=-1)
    return float(-(log_probs.exp() * log_probs).sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    lines = [
        "| teacher | entropy (nats) | divergence | k | top-k mass | loss rel. err (tail) "
        "| hidden grad rel. err / cos (tail) | weight grad rel. err (tail) "
        "| loss rel. err (no tail) | hidden grad rel. err (no tail) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (zipf, spread) in DISTRIBUTIONS.items():
        student_hidden, weight, bias, teacher = make_problem(
            args.rows, args.hidden, args.vocab, zipf, spread
        )
        for divergence, beta in DIVERGENCES:
            label = divergence if divergence != "jsd" else f"jsd (beta {beta})"
            dense = loss_and_grads(student_hidden, weight, bias, teacher, divergence, beta)
            for k in KS:
                sparse = TopKLogits.from_logits(teacher, k)
                with_tail = loss_and_grads(student_hidden, weight, bias, sparse, divergence, beta)
                renormalized = TopKLogits(
                    sparse.token_ids, torch.log_softmax(sparse.log_probs, dim=-1), None
                )
                no_tail = loss_and_grads(
                    student_hidden, weight, bias, renormalized, divergence, beta
                )
                mass = float(sparse.log_probs.exp().sum(-1).mean())
                lines.append(
                    f"| {name} | {entropy(teacher):.2f} | {label} | {k} | {mass:.3f} | "
                    f"{abs(with_tail[0] - dense[0]) / dense[0]:.3f} | "
                    f"{relative(with_tail[1], dense[1]):.3f} / {cosine(with_tail[1], dense[1]):.3f}"
                    f" | {relative(with_tail[2], dense[2]):.3f} | "
                    f"{abs(no_tail[0] - dense[0]) / dense[0]:.3f} | "
                    f"{relative(no_tail[1], dense[1]):.3f} |"
                )
                print(lines[-1], flush=True)
    command = "python benchmarks/topk_error.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = [
        "# Sparse top-k teacher: error against the dense teacher as k grows",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"{args.rows} tokens, hidden size {args.hidden}, V = {args.vocab}, float64, T = 1. "
        "Teacher logits: Zipf prior over tokens + context logits of the given spread; student: "
        "the same projection on perturbed hidden states. 'tail': TopKLogits with the exact tail "
        "mass as one extra bucket; 'no tail': the top-k log-probabilities renormalized. Errors "
        "are relative to the loss and gradients with the dense teacher logits; top-k mass is the "
        "teacher's mean probability on its k kept tokens.",
        "",
        *lines,
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(text) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
