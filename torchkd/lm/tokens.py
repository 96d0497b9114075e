"""Token labels: next-token labels, the positions a token-level term reads, and how one
micro-batch's token loss is normalized (:class:`TokenNormalizer`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "IGNORE_INDEX",
    "TOKEN_NORMALIZER",
    "TokenNormalizer",
    "attention_mask",
    "count_valid_tokens",
    "is_token_labels",
    "next_token_labels",
    "read_labels",
]

TOKEN_NORMALIZER = "token_normalizer"  # the batch entry holding a micro-batch's TokenNormalizer

IGNORE_INDEX = -100  # label of positions no token-level term reads (padding, prompts, the end)


@dataclass(frozen=True)
class TokenNormalizer:
    r"""How the token-level loss of one micro-batch is normalized, so that an optimizer step's
    gradient is that of one batch holding all its tokens, however they fall over the step's
    micro-batches and processes.

    With :math:`N` = ``tokens`` (the valid tokens of every micro-batch of the step on every
    process), :math:`G` = ``micro_batches`` and :math:`W` = ``processes``, a micro-batch whose
    summed token loss is :math:`S_{g,r}` contributes :math:`S_{g,r} / (N / (G W))`: the training
    loop divides each micro-batch's loss by :math:`G` and DDP / FSDP average the processes'
    gradients, so the step's loss is

    .. math::
        \frac{1}{G W} \sum_{g, r} \frac{S_{g,r}}{N / (G W)} = \frac{\sum_{g, r} S_{g,r}}{N}.

    :attr:`divisor` (:math:`N / (G W)`) is what a token loss divides its summed value by (the
    ``num_items_in_batch`` argument of :func:`~torchkd.losses.fused_linear_kd_loss`). The
    training loop and ``DistillationTrainer`` put one in each training micro-batch under
    ``batch["token_normalizer"]``; without one, a token loss averages over its own batch.

    Example:
        >>> TokenNormalizer(tokens=90, micro_batches=3, processes=2).divisor
        15.0
    """

    tokens: float
    micro_batches: int = 1
    processes: int = 1

    def __post_init__(self) -> None:
        tokens = float(self.tokens)
        if not (math.isfinite(tokens) and tokens > 0):
            raise ValueError(f"TokenNormalizer: tokens must be a positive count, got {tokens}")
        for name in ("micro_batches", "processes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenNormalizer: {name} must be an int >= 1, got {value!r}")
        object.__setattr__(self, "tokens", tokens)

    @property
    def divisor(self) -> float:
        """:math:`N / (G W)`: what one micro-batch's summed token loss is divided by."""
        return self.tokens / (self.micro_batches * self.processes)


def is_token_labels(labels: object) -> bool:
    """Whether ``labels`` label tokens (``[B, L]``, one per position), not samples (``[B]``)."""
    return isinstance(labels, Tensor) and labels.dim() >= 2


def next_token_labels(
    input_ids: Tensor, attention_mask: Tensor | None = None, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """Labels for next-token prediction: ``labels[..., t] = input_ids[..., t + 1]``, with
    ``ignore_index`` at the last position and wherever the next token is padding.

    Example:
        >>> next_token_labels(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
        tensor([[   6,    7, -100, -100]])
    """
    labels = torch.full_like(input_ids, ignore_index)
    labels[..., :-1] = input_ids[..., 1:]
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of "
                f"input_ids {tuple(input_ids.shape)}"
            )
        keep = torch.zeros_like(attention_mask, dtype=torch.bool)
        keep[..., :-1] = attention_mask[..., 1:].bool() & attention_mask[..., :-1].bool()
        labels = labels.masked_fill(~keep, ignore_index)
    return labels


def attention_mask(inputs: Any) -> Tensor | None:
    """The ``attention_mask`` of a batch's inputs mapping, as bool (None: none there)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    return mask.bool() if isinstance(mask, Tensor) else None


def read_labels(labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The token labels a token-level term reads: ``labels`` with ``IGNORE_INDEX`` wherever
    ``attention_mask`` is 0. A mask of another shape than the labels (an encoder's, for
    decoder labels) is not the labels' and leaves them as they are.

    Example:
        >>> read_labels(torch.tensor([[6, 7, 8]]), torch.tensor([[1, 1, 0]]))
        tensor([[   6,    7, -100]])
    """
    if attention_mask is None or attention_mask.shape != labels.shape:
        return labels
    return labels.masked_fill(~attention_mask.bool(), IGNORE_INDEX)


def count_valid_tokens(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """How many positions of ``labels`` a token-level term reads (label != ``ignore_index``).

    Example:
        >>> count_valid_tokens(torch.tensor([[6, 7, -100, -100]]))
        2
    """
    return int((labels != ignore_index).sum())
