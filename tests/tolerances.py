"""Tolerances of float32 results against float64 references, derived from float32's precision.

The suite compares float32 computations with float64 references on the same (float32-rounded)
inputs. How far the float32 result lies from the exact one depends on the order in which the
CPU's kernels sum (blocking, vector width, fused multiply-add differ between Intel and AMD
builds of the same BLAS), so a tolerance read off one machine's result fails on another. These
helpers bound the error for *every* summation order instead.

Standard error analysis (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
§2.2, §3.1, §4.2): each rounded operation is off by at most ``u = 2⁻²⁴`` (float32's unit
roundoff) relative to its result, and a sum of ``n`` terms in any order satisfies

    |fl(Σ x_i) − Σ x_i| ≤ γ_{n−1} Σ |x_i|,    γ_n = n u / (1 − n u).

:func:`float32_tolerance` is that bound with ``ε = 2u = 2⁻²³`` (``torch.finfo(float32).eps``)
per term, the factor 2 covering the ``1 / (1 − n u)`` (``n u ≤ 1/2``) and an input's error
carried once more to first order. The bounds are worst cases: typical errors are ``√n`` times
smaller, and a wrong formula is off by orders of magnitude more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps


FLOAT64_EPS = torch.finfo(torch.float64).eps


def float32_tolerance(n_terms: float, magnitude: float, eps: float = FLOAT32_EPS) -> float:
    """Absolute error bound ``n_terms · ε · magnitude`` of a result that sums ``n_terms``
    terms (or passes that many roundings) of total size at most ``magnitude`` (``Σ |x_i|`` of
    a sum; module docstring), ``ε`` the machine epsilon of the dtype computed in.

    Args:
        n_terms: the terms summed plus the other roundings on the way to the result.
        magnitude: a bound on ``Σ |x_i|`` (or on the size of the rounded quantities).
        eps: ``FLOAT32_EPS`` (``2⁻²³``) or, for float64 computations, ``FLOAT64_EPS``
            (``2⁻⁵²``).
    """
    if not n_terms >= 1 or not magnitude >= 0:
        raise ValueError(f"need n_terms >= 1 and magnitude >= 0, got {n_terms}, {magnitude}")
    if not 0 < eps < 1:
        raise ValueError(f"eps: need a machine epsilon in (0, 1), got {eps}")
    return n_terms * eps * magnitude


@dataclass(frozen=True)
class DivergenceTolerance:
    """Absolute float32 error bounds of a softmax divergence loss and of its gradients.

    Attributes:
        row: of each row's divergence (``reduction="none"``).
        loss: of the loss value (the mean over rows).
        logits: of each entry of its gradient w.r.t. the (student or teacher) logits ``z``.
        hidden: of its gradient w.r.t. hidden states ``h`` when ``z = h Wᵀ``.
        weight: of its gradient w.r.t. the projection ``W``.
    """

    row: float
    loss: float
    logits: float
    hidden: float
    weight: float


def divergence_tolerance(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    scale: float = 1.0,
    student_projection: tuple[Tensor, Tensor] | None = None,
    teacher_projection: tuple[Tensor, Tensor] | None = None,
    eps: float = FLOAT32_EPS,
) -> DivergenceTolerance:
    """Float32 error bounds of ``scale · mean_rows D(q, p)`` over ``[N, V]`` logits, from the
    float64 reference's logits (the same rounded inputs, exactly upcast).

    With ``a = z / T``, ``A = max |a|`` (for logits ``z = h Wᵀ`` computed from a projection:
    ``max Σ_k |h_k W_ck| / T``, which bounds the dot products' error), ``L = 2A + log V``
    (``≥ |log p_c|``) and, per row, ``R = Σ_c w_c |r_c|`` the absolute size of the
    divergence's terms (``w`` = q, p or the JSD weights, ``r`` their log-ratios; computed here
    in float64), first-order error analysis of ``log p = a − lse(a)`` in units of ``u``:

    - each ``a_c``: ``(H + 1) A`` (a dot product of ``H`` terms, the division by ``T``);
    - each ``log p_c``: that, plus ``L`` (the subtraction); the log-sum-exp: ``V + 1 + L``
      (``Σ exp`` of ``V`` positive terms ``≤ 1``: ``γ_V`` relative; the log);
    - the divergence ``Σ_c w_c r_c``: ``Σ w_c |δr_c| ≤ 2 ((H + 1) A + V + 1 + 2L)`` from the
      log-probabilities, ``R`` times the weights' relative error (the same budget) and ``V R``
      from the sum. In ``ε = 2u``: per row ``P = ε (1 + R) ((H + 1) A + 2L + 2V + 2)``;
    - the mean over ``N`` rows adds ``ε N mean|D|``; the whole is multiplied by ``scale``.

    The gradient w.r.t. ``a`` of a row, ``g`` (``p − q``, ``p (r − D)``, ...), has
    ``|δg_c| ≤ (p_c + q_c) P`` by the same count; it reaches ``z`` through ``scale / (N T)``,
    ``h`` through a sum over the ``V`` classes times ``W`` (``≤ 2 P max|W|``), ``W`` through a
    sum over the ``N`` rows times ``h`` (``≤ (P max_c Σ_i (p_ic + q_ic) + ε N (1 + R)) max|h|``).

    Args:
        student_logits: ``[N, V]`` float64 student logits (the reference's).
        teacher_logits: ``[N, V]`` float64 teacher logits.
        temperature: ``T``.
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"soft_ce"`` (as forward
            KL: the same log-probabilities, weights and sums).
        beta: the JSD mixture weight of the teacher.
        scale: the factor of the divergence (``T²`` for torchkd's losses).
        student_projection: ``(h [N, H], W [V, H])`` when the student's logits are ``h Wᵀ``.
        teacher_projection: the same for the teacher.
        eps: the machine epsilon of the computation (``FLOAT64_EPS`` for rows computed in
            float64).
    """
    student = student_logits.detach().double() / temperature
    teacher = teacher_logits.detach().double() / temperature
    rows, vocab = student.shape
    log_p, log_q = student.log_softmax(-1), teacher.log_softmax(-1)

    def weighted(log_w: Tensor, log_other: Tensor) -> Tensor:  # w (log w − log other), 0 at w = 0
        return torch.where(log_w.isfinite(), log_w.exp() * (log_w - log_other), 0.0)

    if divergence in ("forward_kl", "soft_ce"):
        row_terms = weighted(log_q, log_p)
    elif divergence == "reverse_kl":
        row_terms = weighted(log_p, log_q)
    elif divergence == "jsd":
        log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
        row_terms = beta * weighted(log_q, log_m) + (1 - beta) * weighted(log_p, log_m)
    else:
        raise ValueError(f"divergence: unknown {divergence!r}")
    term_size = float(row_terms.abs().sum(-1).max())
    both = torch.cat([student, teacher])
    logit_bound = float(both.masked_fill(~both.isfinite(), 0).abs().max())
    dot_terms, abs_hidden, abs_weight = 0, 0.0, 0.0
    for projection in (student_projection, teacher_projection):
        if projection is not None:
            hidden, weight = (tensor.detach().double().abs() for tensor in projection)
            dot_terms = max(dot_terms, hidden.shape[-1])
            logit_bound = max(logit_bound, float((hidden @ weight.T).max()) / temperature)
    if student_projection is not None:
        abs_hidden, abs_weight = (float(t.detach().abs().max()) for t in student_projection)
    log_bound = 2 * logit_bound + math.log(vocab)
    per_row = (
        eps * (1 + term_size) * ((dot_terms + 1) * logit_bound + 2 * log_bound + 2 * vocab + 2)
    )
    mean_size = float(row_terms.sum(-1).abs().mean())
    column_mass = float((log_p.exp() + log_q.exp()).sum(0).max())
    gradient = scale / (rows * temperature)
    summed_rows = column_mass * per_row + float32_tolerance(rows, 1 + term_size, eps)
    return DivergenceTolerance(
        row=scale * per_row,
        loss=scale * (per_row + float32_tolerance(rows, mean_size, eps)),
        logits=gradient * per_row,
        hidden=gradient * 2 * per_row * abs_weight,
        weight=gradient * summed_rows * abs_hidden,
    )


def _multi_row_sum_path(rows: int) -> int:
    """Roundings on a value's path through torch's ``multi_row_sum`` of ``rows`` values: four
    accumulators, ``p = max(4, ⌈log2 rows⌉ // 4)``; level 0 adds ``2^p`` values in sequence,
    then is added into level 1; level ``j`` (1, 2) takes ``2^p`` such merges before it is
    added into level ``j + 1``; level 3 is never emptied (``rows >> 3p`` merges) and the
    final ``acc[0] += acc[1] + acc[2] + acc[3]`` adds 3; the leftover ``rows mod 2^p`` values
    go to level 0 (a shorter path)."""
    level_power = max(4, (rows - 1).bit_length() // 4)  # CeilLog2(rows) // 4, at least 4
    step = 2**level_power
    return (
        min(step, rows)
        + min(step, rows >> level_power)
        + min(step, rows >> 2 * level_power)
        + (rows >> 3 * level_power)
        + 3
    )


def cascade_sum_terms(n_terms: int, threads: int | None = None) -> int:
    """Roundings on any term's path through torch's CPU ``sum`` of ``n_terms`` contiguous
    values (``aten/src/ATen/native/cpu/SumKernel.cpp``, ``cascade_sum``): the ``n_terms``
    argument of :func:`float32_tolerance` for such a sum instead of ``n_terms``.

    The count is ``min(n − 1, M + 6 + 2 W + S)``, an upper bound for every kernel the
    reduction may pick and any chunk a thread is given:

    - ``M = max_{m ≤ n}`` of the path through ``multi_row_sum`` of ``m`` values
      (:func:`_multi_row_sum_path`; the maximum over shorter chunks, since the path is not
      monotone where ``p`` steps up);
    - 6: ``row_sum``'s four interleaved accumulators take up to 3 leftover values into the
      first, then the other 3 are added to it;
    - ``2 W``: the vectorised inner sum's lanes (``W ≤ 16``, AVX-512 floats) are added one by
      one after up to ``W − 1`` leftover scalars;
    - ``S = T + 1`` for ``n ≥ 32768`` (``at::internal::GRAIN_SIZE``): each of ``T`` threads
      writes a partial sum, and the ``T`` partials are summed into the output.

    Sequential summation passes each term through at most ``n − 1`` roundings (Higham §4.2),
    and so does every order, hence the cap. For a reduction over several dimensions that do
    not coalesce into one (a strided view), each outer row's result is added to the output in
    sequence: add their count.

    Args:
        n_terms: the values summed.
        threads: the threads of the reduction (``torch.get_num_threads()`` if ``None``).
    """
    if n_terms < 1:
        raise ValueError(f"n_terms: need >= 1, got {n_terms}")
    if n_terms == 1:
        return 1  # no rounding at all; 1 keeps float32_tolerance's n_terms >= 1
    # the longest chunk of each smaller level power: CeilLog2(m) = 4 p + 3
    chunks = [n_terms] + [
        2 ** (4 * power + 3) for power in range(4, (n_terms - 1).bit_length() // 4)
    ]
    path = max(_multi_row_sum_path(chunk) for chunk in chunks)
    lanes = 16  # AVX-512 float32 lanes, the widest CPU vector torch uses
    split = (threads or torch.get_num_threads()) + 1 if n_terms >= 32768 else 0
    return min(n_terms - 1, path + 6 + 2 * lanes + split)
