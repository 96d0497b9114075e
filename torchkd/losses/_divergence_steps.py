"""The steps the entries of :mod:`torchkd.losses.divergence_table` share, and their base class.

Row sums and elementwise products that give zero-weight terms 0 (``0 log 0 = 0``), the dot
product of the in-place forms, a softmax in place that gives its log-sum-exp, the kept-token
terms of the bucket forms and the log-ratios to a two-point mixture (JSD's and the skew KLs'
``m``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from torchkd.losses._common import jsd_log_ratios

DenseResult = tuple[Tensor, Tensor | None, Tensor | None]


class Buffers(Protocol):
    def get(self, name: str, rows: int) -> Tensor: ...


class Entry:
    """One divergence: its forms as static methods (see the table's docstring), None if absent.

    ``temperature_squared``: whether the losses scale the rows by ``T^2`` (all but TVD).
    """

    temperature_squared = True
    dense: Callable[..., DenseResult]
    chunked: Callable[..., tuple[Tensor, Tensor | None]] | None = None
    buckets: Callable[..., tuple[Tensor, Tensor, Tensor]] | None = None
    cross_logits: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    from_normalizers: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None


def weighted(weights: Tensor, values: Tensor, safe: bool) -> Tensor:
    """``weights * values`` elementwise; with ``safe``, 0 wherever the weight is 0.

    The safe form also keeps autograd finite: the ``where`` sends no gradient into values that
    are NaN or infinite at zero-weight positions (``-inf - (-inf)`` at masked classes).
    """
    if safe:
        return weights * torch.where(weights > 0, values, 0.0)
    return weights * values


def weighted_row_sum(weights: Tensor, values: Tensor, safe: bool) -> Tensor:
    """``sum_c weights * values`` per row; the fast form is one library dot-product call."""
    if safe:
        return weighted(weights, values, safe).sum(-1)
    return torch.linalg.vecdot(weights, values)


def row_dot(first: Tensor, second: Tensor, scratch: Tensor) -> Tensor:
    """``sum_c first * second`` per row through ``scratch`` (on CPU twice as fast as vecdot)."""
    return torch.mul(first, second, out=scratch).sum(-1)


def kept_terms(student_log: Tensor, coefficients: Tensor) -> tuple[Tensor, Tensor]:
    """``P_i c_i`` of the kept buckets and ``c_tail``, from the coefficients of all buckets."""
    return student_log[:, :-1].exp() * coefficients[:, :-1], coefficients[:, -1]


def softmax_in_place(values: Tensor) -> Tensor:
    """Overwrite ``values`` with ``softmax(values)``; return the rows' log-sum-exp.

    The log-sum-exp comes from the softmax itself: the largest probability is
    ``exp(max - lse)``, so ``lse = max - log(max p)``, with ``max p >= 1 / C`` (no underflow).
    """
    maximum = values.amax(-1)
    torch.softmax(values, dim=-1, out=values)  # row by row, so aliasing the input is safe
    return maximum - values.amax(-1).log()


def mixture_ratios(
    first_log: Tensor, second_log: Tensor, weight: float, absent: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(log(u / m), log(v / m))`` for ``m = weight u + (1 - weight) v``, from the
    log-probabilities of ``u`` and ``v``; the classes in ``absent`` (``u = v = 0``) at 0."""
    log_ratio = first_log - second_log
    if absent is not None:  # -inf - (-inf) is NaN
        log_ratio = torch.where(absent, 0.0, log_ratio)
    return jsd_log_ratios(log_ratio, weight)
