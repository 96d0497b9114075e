"""Helpers shared by the feature-level losses: validation, pooling, 1x1 "convolutions"."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import check_floating

_ADAPTIVE_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def check_feature_map(name: str, feature: Tensor) -> None:
    """A feature map is a floating ``[B, C, *spatial]`` tensor with 1 to 3 spatial dims."""
    check_floating(name, feature)
    if feature.dim() not in (3, 4, 5):
        raise ValueError(
            f"{name} must be a feature map [B, C, *spatial] with 1 to 3 spatial dimensions, "
            f"got shape {tuple(feature.shape)}"
        )


def pool_to_size(feature: Tensor, size: Sequence[int]) -> Tensor:
    """Adaptive average pooling of a ``[B, C, *spatial]`` map to ``size`` (no-op if equal)."""
    if tuple(feature.shape[2:]) == tuple(size):
        return feature
    return _ADAPTIVE_POOLS[feature.dim() - 2](feature, list(size))


def match_spatial_size(
    first: Tensor, second: Tensor, *, pool: bool, names: tuple[str, str]
) -> tuple[Tensor, Tensor]:
    """Average-pool two ``[B, C, *spatial]`` maps to their common (smallest) spatial size.

    Both maps must have the same batch size and number of spatial dimensions. With
    ``pool=False`` different spatial sizes are an error.
    """
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same batch size, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    if first.dim() != second.dim():
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of spatial dimensions, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    if first.shape[2:] == second.shape[2:]:
        return first, second
    if not pool:
        raise ValueError(
            f"{names[0]} and {names[1]} have different spatial sizes {tuple(first.shape)} and "
            f"{tuple(second.shape)}; pass pool=True to average-pool the larger to the smaller"
        )
    size = [min(a, b) for a, b in zip(first.shape[2:], second.shape[2:], strict=True)]
    return pool_to_size(first, size), pool_to_size(second, size)


class ChannelLinear(nn.Linear):
    """A 1x1 convolution for any number of spatial dimensions: a linear map over dim 1.

    ``[B, C_in, *spatial] -> [B, C_out, *spatial]``; ``[B, C_in] -> [B, C_out]``.
    """

    def forward(self, feature: Tensor) -> Tensor:
        return super().forward(feature.movedim(1, -1)).movedim(-1, 1)
