"""Sampled (random-sampling) teacher targets: an unbiased sparse estimate of forward KL.

A top-k teacher (:mod:`torchkd.losses.topk`) gives a biased gradient: it says nothing of how
the teacher spreads the mass outside its ``k`` tokens. Anshumann et al., "Sparse Logit Sampling:
Accelerating Knowledge Distillation in LLMs" (ACL 2025) store instead tokens *sampled* from the
teacher. Per position, ``N`` tokens are drawn i.i.d. from :math:`q = \\mathrm{softmax}(z_T / T)`;
the distinct ids ``i`` and their counts :math:`c_i` (:math:`\\sum_i c_i = N`) and the teacher's
entropy :math:`H(q) = -\\sum_j q_j \\log q_j` are kept. Then

.. math::
    \\hat q_i = \\frac{c_i}{N}, \\qquad \\mathbb{E}[\\hat q] = q, \\qquad
    \\widehat{\\mathrm{KL}} = -\\sum_i \\hat q_i \\log p_i - H(q)

with :math:`p = \\mathrm{softmax}(z_S / T)` over the full vocabulary. Linear in
:math:`\\hat q`, the cross-entropy estimate :math:`-\\sum_i \\hat q_i \\log p_i` is unbiased for
:math:`-\\sum_j q_j \\log p_j`, so :math:`\\widehat{\\mathrm{KL}}` is unbiased for
:math:`\\mathrm{KL}(q \\| p)`, and so is its gradient w.r.t. the student's softened logits
:math:`a = z_S / T`,

.. math::
    \\frac{\\partial \\widehat{\\mathrm{KL}}}{\\partial a} = p - \\hat q, \\qquad
    \\mathbb{E}[p - \\hat q] = p - q = \\frac{\\partial \\mathrm{KL}(q \\| p)}{\\partial a}

(:math:`\\sum_i \\hat q_i = 1`). One draw's estimate may be negative; its mean over draws is
the divergence.

With an exact *head* (top-k plus samples combined), the ``k`` most likely tokens ``K`` keep
their probabilities and the ``N`` draws come from the rest of the distribution,
:math:`q_j / m` for :math:`j \\notin K` with :math:`m = \\sum_{j \\notin K} q_j`:

.. math::
    \\hat q_i = q_i \\;(i \\in K), \\qquad \\hat q_j = m \\, \\frac{c_j}{N} \\;(j \\notin K),
    \\qquad \\mathbb{E}[\\hat q] = q

still unbiased, with no noise on the head (where a peaked teacher has most of its mass).

Only forward KL (soft cross-entropy) is linear in :math:`q`: reverse KL, JSD and TVD have no
unbiased estimate of this form and are refused with a sampled teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from torchkd.losses._common import check_number, check_temperature, upcast
from torchkd.losses.topk import TopKLogits, check_topk

__all__ = ["SampledLogits", "draw_samples"]

ENTROPY_TOLERANCE = 1e-4
UNBIASED = ("forward_kl",)  # the divergences a sampled teacher estimates without bias


def draw_samples(log_probs: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """``N`` tokens per row drawn from ``exp(log_probs)`` by inverse-CDF sampling, as distinct
    ids and counts.

    Draw ``n`` is the first id ``j`` whose cumulative probability :math:`\\sum_{l \\le j} q_l`
    exceeds ``uniforms[..., n]`` (uniform in ``[0, 1)``), so tokens of zero probability are never
    drawn. The cumulative sums are taken in float64 and divided by their total, which makes the
    last one exactly 1: no rounding leaves a ``u < 1`` beyond the last token. The draws depend
    on the uniforms alone, not on how rows are chunked: a cache writer seeds them per row
    (reproducible, resumable writes).

    Args:
        log_probs: ``[..., V]`` log-probabilities (``-inf`` allowed).
        uniforms: ``[..., N]`` numbers in ``[0, 1)``.

    Returns:
        ``token_ids`` int64 ``[..., N]``: the distinct drawn ids in increasing order, then
        padding (id 0), and ``counts`` int64 ``[..., N]``: how often each was drawn (0 for
        padding; each row sums to ``N``).

    Example:
        >>> import torch
        >>> half = torch.tensor([0.5, 0.5]).log()
        >>> ids, counts = draw_samples(half, torch.tensor([0.1, 0.7, 0.2]))
        >>> ids.tolist(), counts.tolist()
        ([0, 1, 0], [2, 1, 0])
    """
    cumulative = log_probs.double().exp().cumsum(-1)
    cumulative = cumulative / cumulative[..., -1:]
    drawn = torch.searchsorted(cumulative, uniforms.to(cumulative), right=True).sort(-1).values
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[..., 1:] = drawn[..., 1:] != drawn[..., :-1]
    slot = first.cumsum(-1) - 1  # the distinct id's slot of every draw
    token_ids = torch.zeros_like(drawn).scatter_(-1, slot, drawn)  # a slot's draws share an id
    counts = torch.zeros_like(drawn).scatter_add_(-1, slot, torch.ones_like(drawn))
    return token_ids, counts


@dataclass(frozen=True)
class SampledLogits:
    """A sampled teacher: per position, the distinct ids of ``N`` draws from the teacher's
    distribution, their counts and the teacher's entropy (see the module's estimator).

    Attributes:
        token_ids: ``[..., N]`` int64 ids; those with a positive count distinct within a row
            (slots of count 0 are padding, their ids are ignored).
        counts: ``[..., N]`` integer draw counts (:math:`c_i \\ge 0`, at least one positive per
            row); :math:`\\hat q_i = c_i / \\sum_l c_l`.
        entropy: ``[...]`` the teacher's entropy :math:`H(q)` at the loss's temperature (it
            only shifts the loss value, so that it estimates KL rather than cross-entropy).
        head: the teacher's exact top-``k`` (:class:`TopKLogits`, its tail the mass ``m``
            outside them), the draws being from the rest; None: the draws are from all of
            ``q``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
        >>> seeded = torch.Generator().manual_seed(0)
        >>> sampled = SampledLogits.from_logits(logits, 12, generator=seeded)
        >>> int(sampled.counts.sum())
        12
        >>> round(sampled.entropy.item(), 4)
        0.5951
    """

    token_ids: Tensor
    counts: Tensor
    entropy: Tensor
    head: TopKLogits | None = None

    @classmethod
    def from_logits(
        cls,
        logits: Tensor,
        samples: int,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
        k: int = 0,
    ) -> SampledLogits:
        """``samples`` draws per row from ``softmax(logits / T)`` (:func:`draw_samples`) and the
        exact entropy (no gradient); with ``k > 0`` the top ``k`` are kept exactly as the head
        (:meth:`TopKLogits.from_logits`) and the draws come from the other tokens. The uniforms
        are ``uniforms`` (``[..., samples]``) when given, else drawn in float64 on the CPU from
        ``generator``."""
        check_temperature(temperature)
        check_number("samples", samples, minimum=1, integer=True)
        check_number("k", k, minimum=0, integer=True)
        if k >= logits.shape[-1]:
            raise ValueError(
                f"k must be below the vocabulary ({logits.shape[-1]}) to leave tokens to "
                f"sample, got {k}"
            )
        with torch.no_grad():
            log_probs = torch.log_softmax(upcast(logits) / temperature, dim=-1)
            head = rest = None
            if k:
                head = TopKLogits.from_logits(logits, k, temperature)
                rest = log_probs.scatter(-1, head.token_ids, float("-inf"))
                # a row whose rest has no mass left (m = 0) draws from q: its weight m is 0
                empty = torch.isneginf(rest.amax(-1, keepdim=True))
                rest = torch.where(empty, log_probs, rest)
            if uniforms is None:
                shape = (*logits.shape[:-1], samples)
                uniforms = torch.rand(shape, generator=generator, dtype=torch.float64)
            elif uniforms.shape != (*logits.shape[:-1], samples):
                raise ValueError(
                    f"uniforms must have shape {(*logits.shape[:-1], samples)} (the rows, "
                    f"samples), got {tuple(uniforms.shape)}"
                )
            drawn_from = log_probs if rest is None else rest
            token_ids, counts = draw_samples(drawn_from, uniforms.to(logits.device))
            entropy = torch.special.entr(log_probs.exp()).sum(-1)
        return cls(token_ids, counts, entropy, head)

    def estimate(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """The ids and :math:`\\hat q` per row, ``[..., k + N]`` (``dtype``, default the
        entropy's): the head's probabilities, then :math:`m \\, c / \\sum c` (``m = 1``
        without a head)."""
        dtype = dtype or self.entropy.dtype
        counts = self.counts.to(dtype)
        weights = counts / counts.sum(-1, keepdim=True)
        if self.head is None:
            return self.token_ids, weights
        head = self.head.log_probs.to(dtype).exp()
        if self.head.tail_log_mass is None:
            mass = (1 - head.sum(-1)).clamp_min(0)
        else:
            mass = self.head.tail_log_mass.to(dtype).exp()
        ids = torch.cat([self.head.token_ids, self.token_ids], -1)
        return ids, torch.cat([head, mass.unsqueeze(-1) * weights], -1)


def check_sampled(targets: SampledLogits, rows_shape: torch.Size, vocab: int) -> None:
    """Validate a :class:`SampledLogits` against the rows' shape and the vocabulary size."""
    ids, counts, entropy = targets.token_ids, targets.counts, targets.entropy
    if not isinstance(ids, Tensor) or ids.dtype != torch.int64:
        raise TypeError(
            "SampledLogits.token_ids must be an int64 tensor, got "
            f"{getattr(ids, 'dtype', type(ids))}"
        )
    if not isinstance(counts, Tensor) or counts.is_floating_point() or counts.dtype == torch.bool:
        raise TypeError(
            f"SampledLogits.counts must be an integer tensor, got "
            f"{getattr(counts, 'dtype', type(counts))}"
        )
    if not isinstance(entropy, Tensor) or not entropy.is_floating_point():
        raise TypeError("SampledLogits.entropy must be a floating-point tensor")
    if ids.shape[:-1] != rows_shape or counts.shape != ids.shape or ids.dim() == 0:
        raise ValueError(
            f"SampledLogits.token_ids and counts must both have shape "
            f"[{', '.join(map(str, rows_shape))}, N] (the student's rows), got "
            f"{tuple(ids.shape)} and {tuple(counts.shape)}"
        )
    if entropy.shape != rows_shape:
        raise ValueError(
            f"SampledLogits.entropy must have shape {tuple(rows_shape)}, got {tuple(entropy.shape)}"
        )
    if entropy.requires_grad:
        raise ValueError("SampledLogits.entropy requires grad, but sampled targets get none")
    if targets.head is not None:
        if not isinstance(targets.head, TopKLogits):
            raise TypeError(
                f"SampledLogits.head must be a TopKLogits or None, got {type(targets.head)}"
            )
        check_topk(targets.head, rows_shape, vocab)
    if ids.numel() == 0:
        return
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(
            f"SampledLogits.token_ids must be in [0, {vocab}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    if bool((counts < 0).any()) or bool((counts.sum(-1) < 1).any()):
        raise ValueError(
            "SampledLogits.counts must be non-negative with at least one draw in every row"
        )
    drawn = torch.where(counts > 0, ids, -1 - torch.arange(ids.shape[-1], device=ids.device))
    if ids.shape[-1] > 1 and bool((drawn.sort(-1).values.diff(dim=-1) == 0).any()):
        raise ValueError(
            "SampledLogits.token_ids repeat a drawn id within a row; give each id once with "
            "its count"
        )
    if not bool(torch.isfinite(entropy).all()) or bool((entropy < -ENTROPY_TOLERANCE).any()):
        raise ValueError("SampledLogits.entropy must be finite entropies (>= 0)")


class SampledRows(NamedTuple):
    """A sampled teacher's selected rows as the fused kernel reads them: ``ids`` ``[n, N]``,
    ``weights`` :math:`\\hat q` ``[n, N]`` (0 for padding) and ``entropy`` ``[n]``."""

    ids: Tensor
    weights: Tensor
    entropy: Tensor

    def rows(self, start: int, stop: int) -> SampledRows:
        return SampledRows(self.ids[start:stop], self.weights[start:stop], self.entropy[start:stop])


def sampled_divergence(student: Tensor, teacher: SampledRows) -> Tensor:
    """Rows of :math:`\\widehat{\\mathrm{KL}}` and, in place, ``student`` <- :math:`p - \\hat q`.

    ``student`` ``[n, V]`` holds the softened logits :math:`a` on entry. Padding and repeated
    ids are harmless: their weight is 0, or they add up (``scatter_add``). Student
    log-probabilities of ``-inf`` (vocabulary masked by a bias) are clamped to the dtype's
    lowest value, so that padding gives ``0`` rather than ``0 * -inf``.
    """
    torch.log_softmax(student, dim=-1, out=student)
    kept = student.gather(1, teacher.ids).clamp_min(torch.finfo(student.dtype).min)
    cross_entropy = -(teacher.weights * kept).sum(-1)
    student.exp_().scatter_add_(1, teacher.ids, -teacher.weights)
    return cross_entropy - teacher.entropy
