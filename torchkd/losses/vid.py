"""Variational information distillation (VID): a Gaussian likelihood of the teacher feature."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_reduction,
    reduce_rows,
    upcast,
)
from torchkd.losses._feature_common import ChannelLinear, match_spatial_size
from torchkd.losses.registry import Shapes, register

__all__ = ["VIDLoss", "vid_loss"]


def vid_loss(
    pred_mean: Tensor, pred_var: Tensor, target: Tensor, *, reduction: str = "mean"
) -> Tensor:
    r"""Gaussian negative log-likelihood of the teacher feature under the student's prediction.

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{b,c,x} \frac{1}{2}\Big(
            \frac{(t_{b,c,x} - \mu_{b,c,x})^2}{\sigma_c^2} + \log \sigma_c^2 \Big)

    i.e. :math:`-\log \mathcal{N}(t; \mu, \sigma^2)` without the constant
    :math:`\frac{1}{2}\log 2\pi`, as in the authors' code. From Ahn et al., "Variational
    Information Distillation for Knowledge Transfer", CVPR 2019.

    Args:
        pred_mean: predicted mean ``[B, C, *spatial]`` (or ``[B, C]``).
        pred_var: positive variance, either one per channel (``[C]``, applied along dim 1) or
            one per element (the shape of ``target``).
        target: teacher feature, the shape of ``pred_mean``.
        reduction: ``"mean"`` (default, over all elements), ``"batchmean"`` (sum / B),
            ``"sum"``, or ``"none"`` (one summed value per sample, ``[B]``).

    Example:
        >>> import torch
        >>> target = torch.zeros(2, 3, 4)
        >>> vid_loss(torch.ones(2, 3, 4), torch.ones(3), target).item()
        0.5
    """
    check_floating("pred_mean", pred_mean)
    check_floating("pred_var", pred_var)
    check_floating("target", target)
    check_reduction(reduction)
    if pred_mean.dim() < 2 or pred_mean.shape != target.shape:
        raise ValueError(
            f"pred_mean {tuple(pred_mean.shape)} and target {tuple(target.shape)} must have the "
            "same shape [B, C, ...]"
        )
    channels = target.shape[1]
    if pred_var.shape == (channels,):
        pred_var = pred_var.reshape(channels, *([1] * (target.dim() - 2)))
    elif pred_var.shape != target.shape:
        raise ValueError(
            f"pred_var must have shape ({channels},) (one variance per channel) or the target's "
            f"shape {tuple(target.shape)}, got {tuple(pred_var.shape)}"
        )
    if not bool((pred_var.detach() > 0).all()):
        raise ValueError(f"pred_var must be > 0 everywhere, got min {pred_var.min().item():g}")
    pred_mean, pred_var, target = (
        upcast(pred_mean, pred_var, target),
        upcast(pred_var, pred_mean, target),
        upcast(target, pred_mean, pred_var),
    )
    nll = 0.5 * ((target - pred_mean).pow(2) / pred_var + pred_var.log())
    per_sample = nll.reshape(nll.shape[0], -1).sum(dim=1)
    return reduce_rows(
        per_sample, reduction, rows_shape=per_sample.shape, elements_per_row=nll[0].numel()
    )


def _vid_channels(student: Shapes, teacher: Shapes) -> dict[str, Any]:
    """The regressor's sizes from the probed shapes; as in the VID reference (RepDistiller) its
    hidden width is the teacher's."""
    return {
        "num_input_channels": student[0][1],
        "num_mid_channels": teacher[0][1],
        "num_target_channels": teacher[0][1],
    }


@register(
    "vid",
    functional=None,
    signature="features",
    family="feature",
    compares_shapes=True,
    sizes=_vid_channels,
)
class VIDLoss(nn.Module):
    r"""VID with its trainable parts: a 1x1-conv regressor for the mean and per-channel variances.

    .. math::
        \mu = W_3\,\mathrm{relu}(W_2\,\mathrm{relu}(W_1 F^s)), \qquad
        \sigma_c^2 = \mathrm{softplus}(\alpha_c) + \epsilon, \qquad
        \mathcal{L} = \mathrm{vid\_loss}(\mu, \sigma^2, F^t)

    The :math:`W_i` are bias-free 1x1 convolutions (linear maps over the channel dimension, so
    ``[B, C]`` embeddings and 1-D/2-D/3-D feature maps all work) and :math:`\alpha_c` is
    initialized so that :math:`\sigma_c^2 = ` ``init_pred_var``. If the student's and teacher's
    spatial sizes differ, the larger map is average-pooled to the smaller one first, as in the
    authors' code. RepDistiller sums one VID term per layer pair with weight 1.

    The engine builds it with the channel counts it probed: ``num_input_channels`` = the
    student's channels, ``num_target_channels`` = the teacher's, ``num_mid_channels`` = the
    regressor's width (RepDistiller uses the teacher's channel count); no adapter is needed.

    Args:
        num_input_channels: student feature channels.
        num_mid_channels: hidden width of the regressor.
        num_target_channels: teacher feature channels.
        init_pred_var: initial variance of every channel, finite and ``> eps``.
        eps: variance floor, finite and ``>= 0``.

    Example:
        >>> import torch
        >>> loss = VIDLoss(num_input_channels=4, num_mid_channels=8, num_target_channels=6)
        >>> [round(v, 4) for v in loss.variance().tolist()]
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
        >>> loss(torch.randn(2, 4, 5, 5), torch.randn(2, 6, 5, 5)).shape
        torch.Size([])
    """

    def __init__(
        self,
        num_input_channels: int,
        num_mid_channels: int,
        num_target_channels: int,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_input_channels", num_input_channels),
            ("num_mid_channels", num_mid_channels),
            ("num_target_channels", num_target_channels),
        ):
            check_number(name, value, minimum=1, integer=True)
        check_number("eps", eps, minimum=0.0)
        check_number("init_pred_var", init_pred_var, minimum=eps, strict=True)
        self.num_input_channels = num_input_channels
        self.num_mid_channels = num_mid_channels
        self.num_target_channels = num_target_channels
        self.init_pred_var = init_pred_var
        self.eps = eps
        self.regressor = nn.Sequential(
            ChannelLinear(num_input_channels, num_mid_channels, bias=False),
            nn.ReLU(),
            ChannelLinear(num_mid_channels, num_mid_channels, bias=False),
            nn.ReLU(),
            ChannelLinear(num_mid_channels, num_target_channels, bias=False),
        )
        # softplus(raw) = v  <=>  raw = log(exp(v) - 1) = v + log(1 - exp(-v)), v = var - eps:
        # the second form does not overflow for large initial variances.
        excess = init_pred_var - eps
        raw = excess + math.log(-math.expm1(-excess))
        self.raw_variance = nn.Parameter(torch.full((num_target_channels,), raw))

    def variance(self) -> Tensor:
        """The per-channel predicted variance ``[num_target_channels]``."""
        return F.softplus(self.raw_variance) + self.eps

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        check_floating("student_feature", student_feature)
        check_floating("teacher_feature", teacher_feature)
        if student_feature.dim() < 2 or student_feature.shape[1] != self.num_input_channels:
            raise ValueError(
                f"student_feature must be [B, {self.num_input_channels}, ...] "
                f"(num_input_channels), got {tuple(student_feature.shape)}"
            )
        if teacher_feature.dim() < 2 or teacher_feature.shape[1] != self.num_target_channels:
            raise ValueError(
                f"teacher_feature must be [B, {self.num_target_channels}, ...] "
                f"(num_target_channels), got {tuple(teacher_feature.shape)}"
            )
        dtype = self.raw_variance.dtype  # computed in the module's dtype (half inputs upcast)
        student_feature, teacher_feature = match_spatial_size(
            student_feature.to(dtype),
            teacher_feature.to(dtype),
            pool=True,
            names=("student_feature", "teacher_feature"),
        )
        pred_mean = self.regressor(student_feature)
        return vid_loss(pred_mean, self.variance(), teacher_feature)

    def extra_repr(self) -> str:
        return (
            f"num_input_channels={self.num_input_channels}, "
            f"num_mid_channels={self.num_mid_channels}, "
            f"num_target_channels={self.num_target_channels}, "
            f"init_pred_var={self.init_pred_var}, eps={self.eps}"
        )


# functional=None: the loss owns trainable state; vid_loss takes (pred_mean, pred_var, target).
