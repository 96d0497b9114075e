"""Code -> docstring retrieval scores: the rank of each snippet's own docstring among all
held-out docstrings, by cosine similarity.

With :math:`c_i` the code embedding of snippet :math:`i`, :math:`d_j` the docstring embeddings
and :math:`s_{ij} = \\cos(c_i, d_j)`, the rank of the right docstring is

.. math::
    r_i = 1 + \\#\\{j \\ne i : s_{ij} > s_{ii}\\} + \\tfrac12 \\#\\{j \\ne i : s_{ij} = s_{ii}\\}

(ties share the average rank), and over the :math:`N` snippets

.. math::
    \\text{MRR@10} = \\frac1N \\sum_i \\frac{[r_i \\le 10]}{r_i}, \\qquad
    \\text{R@}k = \\frac1N \\sum_i [r_i \\le k].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["retrieval_ranks", "retrieval_scores"]


def retrieval_ranks(code: Tensor, docs: Tensor) -> Tensor:
    """``[N]`` ranks of docstring ``i`` for snippet ``i`` among the ``N`` docstrings.

    Example:
        >>> code = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 tie
        >>> retrieval_ranks(code, code).tolist()
        [1.5, 1.5, 1.0]
    """
    if code.dim() != 2 or code.shape[0] != docs.shape[0] or code.shape[0] == 0:
        raise ValueError(
            f"code and docs must be [N, D] and [N, D'] with the same N > 0, got "
            f"{tuple(code.shape)} and {tuple(docs.shape)}"
        )
    if code.shape[1] != docs.shape[1]:
        raise ValueError(
            f"code embeddings ({code.shape[1]}) and docstring embeddings ({docs.shape[1]}) "
            "must live in one space of one size"
        )
    scores = F.normalize(code.double(), dim=1) @ F.normalize(docs.double(), dim=1).T
    right = scores.diagonal().unsqueeze(1)
    greater = (scores > right).sum(1)
    ties = (scores == right).sum(1) - 1
    return 1.0 + greater.double() + ties.double() / 2


def retrieval_scores(code: Tensor, docs: Tensor) -> dict[str, float]:
    """``mrr10``, ``r1`` and ``r10`` (fractions in [0, 1]) of :func:`retrieval_ranks`."""
    ranks = retrieval_ranks(code, docs)
    top10 = ranks <= 10
    return {
        "mrr10": float(torch.where(top10, 1.0 / ranks, 0.0).mean()),
        "r1": float((ranks <= 1).double().mean()),
        "r10": float(top10.double().mean()),
    }
