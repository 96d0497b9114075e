"""Contrast indices for CRD (Tian, Krishnan & Isola, ICLR 2020): which memory-bank rows each
anchor is contrasted against.

Column 0 of a contrast index is the positive, columns ``1..K`` the negatives, drawn with
replacement (independent draws from the noise distribution, as NCE assumes and as
RepDistiller's in-loss sampler does). Used by :class:`torchkd.losses.crd.CRDLoss` and by
:class:`torchkd.data.contrastive.ContrastiveSampleDataset`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["draw_contrast_index", "group_by_class"]

SamplingMode = Literal["exact", "relax"]
_RANDOM_RANGE = 2**62  # uniform integers reduced modulo a pool size (bias < pool / 2**62)


def check_index_tensor(name: str, index: Tensor, shape: tuple[int, ...], num_samples: int) -> None:
    """An integer tensor of ``shape`` holding sample indices in ``[0, num_samples)``."""
    if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {getattr(index, 'dtype', index)}")
    if tuple(index.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise ValueError(
            f"{name} must hold sample indices in [0, {num_samples}) (num_samples), got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )


def group_by_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sample indices sorted by class, and where each class starts in that order.

    Args:
        labels: ``[N]`` non-negative integer class of every sample.

    Returns:
        ``samples_by_class`` ``[N]`` (stable sort by class) and ``class_offsets`` ``[C + 1]``:
        the samples of class ``c`` are ``samples_by_class[class_offsets[c]:class_offsets[c + 1]]``.

    Example:
        >>> group_by_class(torch.tensor([1, 0, 1, 2]))
        (tensor([1, 0, 2, 3]), tensor([0, 1, 3, 4]))
    """
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', labels)}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must have shape [num_samples], got {list(labels.shape)}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0 (class indices), got min {int(labels.min())}")
    labels = labels.long()
    counts = torch.bincount(labels)
    if int(counts.max()) == labels.numel():
        raise ValueError("labels hold a single class: there are no other-class negatives to draw")
    class_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return torch.sort(labels, stable=True).indices, class_offsets


def _uniform_below(
    bound: Tensor, shape: tuple[int, ...], generator: torch.Generator | None
) -> Tensor:
    """Integers uniform in ``[0, bound)`` (``bound`` broadcast against ``shape``)."""
    draws = torch.randint(_RANDOM_RANGE, shape, generator=generator, device=bound.device)
    return draws % bound


def draw_contrast_index(
    index: Tensor,
    num_negatives: int,
    *,
    labels: Tensor,
    samples_by_class: Tensor,
    class_offsets: Tensor,
    mode: SamplingMode = "exact",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Positive and negative sample indices for each anchor, as RepDistiller's CIFAR sampler.

    Column 0 is the positive: the anchor itself (``"exact"``) or a random sample of the anchor's
    class (``"relax"``). Columns ``1..K`` are negatives drawn uniformly, with replacement, from
    the samples of *other* classes.

    Args:
        index: ``[B]`` anchor sample indices.
        num_negatives: ``K``.
        labels: ``[N]`` class of every sample.
        samples_by_class: from :func:`group_by_class`.
        class_offsets: from :func:`group_by_class`.
        mode: ``"exact"`` or ``"relax"``.
        generator: random generator on ``index``'s device, or None for the global one.

    Returns:
        ``[B, K + 1]`` long tensor on ``index``'s device.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1, 1])
        >>> order, offsets = group_by_class(labels)
        >>> anchors = torch.tensor([0, 3])
        >>> drawn = draw_contrast_index(
        ...     anchors, 4, labels=labels, samples_by_class=order, class_offsets=offsets
        ... )
        >>> drawn[:, 0].tolist(), labels[drawn[0, 1:]].tolist(), labels[drawn[1, 1:]].tolist()
        ([0, 3], [1, 1, 1, 1], [0, 0, 0, 0])
    """
    if mode not in ("exact", "relax"):
        raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
    anchor_class = labels[index]
    class_start = class_offsets[anchor_class]
    class_size = class_offsets[anchor_class + 1] - class_start
    other_size = labels.shape[0] - class_size
    batch_size = index.shape[0]
    position = _uniform_below(other_size[:, None], (batch_size, num_negatives), generator)
    position = position + (position >= class_start[:, None]) * class_size[:, None]
    negatives = samples_by_class[position]
    if mode == "exact":
        positives = index.long()
    else:
        offset = _uniform_below(class_size, (batch_size,), generator)
        positives = samples_by_class[class_start + offset]
    return torch.cat([positives[:, None], negatives], dim=1)
