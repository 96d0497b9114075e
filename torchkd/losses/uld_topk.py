"""ULD (:mod:`torchkd.losses.uld`) against a cached top-k teacher
(:class:`~torchkd.losses.topk.TopKLogits`): the teacher's sorted probability vector rebuilt
from its ``k`` kept probabilities and its tail mass.

ULD compares the sorted probabilities of the whole vocabulary, which a top-k teacher no longer
has: the ``V_T - k`` entries outside the top k are known only by their total mass
:math:`m = 1 - \\sum_{j \\le k} q_{(j)}` (the cache's tail). Their probabilities are taken as
equal, so the teacher's sorted vector is

.. math::
    \\hat q = \\big( q_{(1)}, \\dots, q_{(k)}, \\underbrace{\\tfrac{m}{V_T - k}, \\dots,
    \\tfrac{m}{V_T - k}}_{V_T - k} \\big)

(each tail entry is at most :math:`q_{(k)}`, so their mean is too: :math:`\\hat q` stays
sorted) and the loss is :math:`\\mathrm{ULD}(p, \\hat q)`. It is an approximation: exact when
the tail holds a single entry (``k = V_T - 1``), no entry (``k = V_T``) or no mass
(:math:`m = 0`); otherwise the tail's real entries differ from their mean and
:math:`|\\mathrm{ULD}(p, \\hat q) - \\mathrm{ULD}(p, q)| \\le \\sum_{i > k} |q_{(i)} -
\\hat q_{(i)}| \\le 2m` (the triangle inequality: the sorted vectors' L1 distance).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchkd.losses._common import check_number
from torchkd.losses.sampled import SampledLogits
from torchkd.losses.topk import TopKLogits, check_topk, teacher_buckets

__all__ = ["check_topk_teacher", "topk_sorted_probs"]


def check_topk_teacher(
    teacher_logits: Any, teacher_vocab_size: Any, rows_shape: torch.Size
) -> None:
    """A cached teacher ULD can read: a :class:`TopKLogits` of the rows' shape, with the
    teacher's vocabulary size ``V_T`` (a ``TypeError``/``ValueError`` naming the argument)."""
    if isinstance(teacher_logits, SampledLogits):
        raise ValueError(
            "teacher_logits: ULD cannot read a sampled teacher (SampledLogits, a cache of "
            "kind 'sampled'): ULD is not linear in the teacher's probabilities, so the sampled "
            "estimate of it would be biased; write a top-k cache (kind: topk)"
        )
    if not isinstance(teacher_logits, TopKLogits):
        raise TypeError(
            "teacher_logits must be a TopKLogits (a cached top-k teacher) or None, got "
            f"{type(teacher_logits).__name__}"
        )
    if teacher_vocab_size is None:
        raise ValueError(
            "teacher_vocab_size: ULD from a cached top-k teacher needs the teacher's vocabulary "
            "size V_T (the cache manifest's vocab_size) to spread the tail mass over the "
            "V_T - k tokens outside the top k"
        )
    check_number("teacher_vocab_size", teacher_vocab_size, minimum=1, integer=True)
    check_topk(teacher_logits, rows_shape, int(teacher_vocab_size))


def topk_sorted_probs(log_probs: Tensor, tail_log_mass: Tensor | None, vocab_size: int) -> Tensor:
    """``[n, V_T]``: the teacher's probability vector :math:`\\hat q` of the module docstring,
    from ``[n, k]`` top-k log-probabilities and the ``[n]`` log tail mass (None:
    :math:`1 - \\sum_j q_{(j)}`), in ``log_probs``' dtype."""
    buckets = teacher_buckets(log_probs, tail_log_mass).exp()
    kept, tail = buckets[:, :-1], buckets[:, -1:]
    rest = vocab_size - kept.shape[-1]
    return torch.cat([kept, (tail / max(rest, 1)).expand(-1, rest)], dim=-1)
