"""How close a student's sentence embeddings are to the teacher's, and how fast it encodes.

- :func:`spearman`: Spearman's rank correlation (Pearson correlation of the ranks, ties
  averaged) between the student's and the teacher's cosine similarities over all pairs
  :math:`i < j` of held-out sentences;
- :func:`neighbour_overlap`: the mean fraction of each sentence's ``k`` nearest neighbours
  (by cosine, itself excluded) that the student and the teacher share;
- :func:`sentences_per_second`: encoding throughput, student and teacher interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkd.forward import call_model

__all__ = [
    "average_ranks",
    "encode",
    "neighbour_overlap",
    "pair_similarities",
    "sentences_per_second",
    "spearman",
]


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor (float64), tied values sharing their mean rank.

    Example:
        >>> average_ranks(torch.tensor([10.0, 30.0, 20.0, 30.0])).tolist()
        [1.0, 3.5, 2.0, 3.5]
    """
    if values.dim() != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    # run boundaries of equal values; each run gets the mean of its positions' ranks
    new_run = torch.ones_like(ordered, dtype=torch.bool)
    new_run[1:] = ordered[1:] != ordered[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, len(values) + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1 if len(values) else 0, dtype=torch.float64)
    run_sum.index_add_(0, run_id, positions)
    run_size = torch.bincount(run_id).double()
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = (run_sum / run_size)[run_id]
    return ranks


def spearman(first: Tensor, second: Tensor) -> float:
    """Spearman's rank correlation of two 1-D samples of equal length.

    .. math::
        \\rho = \\frac{\\operatorname{cov}(R(x), R(y))}{\\sigma_{R(x)}\\,\\sigma_{R(y)}}

    with :math:`R` the average ranks (Spearman, 1904).

    Example:
        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> round(spearman(x, x**2), 12), round(spearman(x, -x), 12)
        (1.0, -1.0)
    """
    if first.shape != second.shape or first.dim() != 1 or len(first) < 2:
        raise ValueError(
            f"first and second must be 1-D of the same length >= 2, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    first_ranks = average_ranks(first) - (len(first) + 1) / 2
    second_ranks = average_ranks(second) - (len(first) + 1) / 2
    norm = first_ranks.norm() * second_ranks.norm()
    return float((first_ranks @ second_ranks) / norm) if norm > 0 else float("nan")


def pair_similarities(embeddings: Tensor) -> Tensor:
    """Cosine similarities of every pair ``i < j`` of rows, in row-major order (float64)."""
    unit = nn.functional.normalize(embeddings.double(), dim=-1)
    rows, columns = torch.triu_indices(len(unit), len(unit), offset=1)
    return (unit @ unit.T)[rows, columns]


def neighbour_overlap(student: Tensor, teacher: Tensor, k: int = 10) -> float:
    """Mean over rows of :math:`|N_k^s(i) \\cap N_k^t(i)| / k`, with :math:`N_k(i)` the ``k``
    rows of highest cosine similarity to row ``i`` (row ``i`` itself excluded).

    Example:
        >>> points = torch.randn(12, 4)
        >>> neighbour_overlap(points, 3.0 * points, k=5)
        1.0
    """
    if student.shape[0] != teacher.shape[0] or not 0 < k < student.shape[0]:
        raise ValueError(
            f"student and teacher need the same number of rows, more than k={k}; got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )

    def neighbours(embeddings: Tensor) -> Tensor:
        unit = nn.functional.normalize(embeddings.double(), dim=-1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(float("-inf"))
        return similarity.topk(k, dim=1).indices

    student_nn, teacher_nn = neighbours(student), neighbours(teacher)
    shared = (student_nn.unsqueeze(2) == teacher_nn.unsqueeze(1)).any(2).sum(1)
    return float(shared.double().mean() / k)


@torch.no_grad()
def encode(model: nn.Module, batches: Sequence[dict[str, Any]]) -> Tensor:
    """The model's outputs on ``batches`` (each a dict with ``inputs``), concatenated, in eval
    mode (the previous mode restored)."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([call_model(model, batch["inputs"]) for batch in batches])
    finally:
        model.train(was_training)


def sentences_per_second(
    models: dict[str, nn.Module], batches: Sequence[dict[str, Any]], repeats: int = 5
) -> dict[str, float]:
    """Median sentences per second of each model over ``repeats`` passes through ``batches``.

    One warm-up pass each, then the models take turns (A B A B ...) so that drifts of a shared
    machine's speed hit them alike. Runs with the current torch thread count.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sentences = sum(len(batch["index"]) for batch in batches)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        encode(model, batches[:1])
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            encode(model, batches)
            seconds[name].append(time.perf_counter() - started)
    return {name: sentences / statistics.median(times) for name, times in seconds.items()}
