"""Feature-map distillation: FitNets hints, attention transfer, NST and FSP matrices.

Feature maps are ``[B, C, *spatial]`` with one to three spatial dimensions (``[B, C, L]`` from
1-D convolutions, ``[B, C, H, W]`` from 2-D ones). Where a loss compares maps of different
resolutions, the larger map is average-pooled to the smaller one (``pool=True``, as in
RepDistiller); ``pool=False`` turns that into an error instead. Every loss computes and sums in
float32 at least and returns float32 for half-precision features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_reduction,
    largest_magnitude,
    reduce_rows,
    unit_vectors,
    upcast,
)
from torchkd.losses._feature_common import check_feature_map, match_spatial_size
from torchkd.losses.registry import register

__all__ = [
    "ATLoss",
    "FSPLoss",
    "HintLoss",
    "NSTLoss",
    "at_loss",
    "attention_map",
    "fsp_loss",
    "fsp_matrix",
    "hint_loss",
    "nst_loss",
]

PairReduction = Literal["sum", "mean"]


def _as_layer_list(name: str, features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(features, Tensor):
        return [features]
    if not isinstance(features, Sequence) or not features:
        raise TypeError(f"{name} must be a tensor or a non-empty sequence of tensors")
    return list(features)


def _check_pair_reduction(pair_reduction: str) -> None:
    if pair_reduction not in ("sum", "mean"):
        raise ValueError(f"pair_reduction must be 'sum' or 'mean', got {pair_reduction!r}")


def _reduce_pairs(pair_losses: list[Tensor], pair_reduction: str) -> Tensor:
    _check_pair_reduction(pair_reduction)
    total = torch.stack(pair_losses).sum()
    return total if pair_reduction == "sum" else total / len(pair_losses)


def _scaled_maps(feature: Tensor, per_channel: bool = True) -> Tensor:
    """``[B, C, *spatial]`` divided by the largest magnitude of each map (or each sample).

    For losses that normalize each channel map (NST) or each sample (AT) this changes nothing
    but keeps average pooling of values near the float32 range from overflowing.
    """
    dims = tuple(range(2 if per_channel else 1, feature.dim()))
    return feature / largest_magnitude(feature, dims)


def hint_loss(
    student_feature: Tensor, teacher_feature: Tensor, *, reduction: str = "mean"
) -> Tensor:
    r"""FitNets hint loss: squared error between the adapted student feature and the teacher's.

    .. math::
        \mathcal{L} = \frac{1}{N} \sum_{i} \big(F^s_i - F^t_i\big)^2

    From Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. The regressor that maps
    the student's feature to the teacher's shape is an adapter built by the engine
    (``Term(adapter=...)``), not part of this loss, so the shapes must already match exactly.

    Args:
        student_feature: adapted student feature, any shape ``[B, ...]``.
        teacher_feature: teacher feature of the same shape.
        reduction: ``"mean"`` (default, over all elements, as ``F.mse_loss``), ``"batchmean"``
            (sum / B), ``"sum"``, or ``"none"`` (one summed value per sample, shape ``[B]``).

    Example:
        >>> import torch
        >>> hint_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)).item()
        1.0
    """
    check_floating("student_feature", student_feature)
    check_floating("teacher_feature", teacher_feature)
    if student_feature.dim() == 0:
        raise ValueError("student_feature must have a batch dimension, got a scalar")
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"student_feature {tuple(student_feature.shape)} and teacher_feature "
            f"{tuple(teacher_feature.shape)} must have the same shape; map the student to the "
            f"teacher's shape with an adapter (Term(adapter='auto' | 'conv1x1' | 'linear'))"
        )
    difference = upcast(student_feature, teacher_feature) - upcast(teacher_feature, student_feature)
    per_sample = difference.pow(2).reshape(difference.shape[0], -1).sum(dim=1)
    return reduce_rows(
        per_sample,
        reduction,
        rows_shape=difference.shape[:1],
        elements_per_row=difference[0].numel(),
    )


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    r"""Spatial attention map (Zagoruyko & Komodakis), ``[B, C, *spatial] -> [B, prod(spatial)]``.

    :math:`Q = \mathrm{vec}(\frac{1}{C}\sum_c |F_c|^p)`, scaled to unit L2 norm per sample.
    Each sample's feature is first divided by its largest magnitude (``Q`` does not change), so
    activations near the float32 range do not overflow; exact zeros (ReLU maps) get a zero
    gradient for every ``p > 0`` (``|x|^p`` has an infinite slope at 0 when ``p < 1``).

    Example:
        >>> import torch
        >>> attention_map(torch.ones(1, 2, 2, 2)).tolist()
        [[0.5, 0.5, 0.5, 0.5]]
    """
    check_number("p", p, minimum=0.0, strict=True)
    magnitude = upcast(feature).abs()
    dims = tuple(range(1, feature.dim()))
    magnitude = magnitude / largest_magnitude(magnitude, dims)
    nonzero = magnitude > 0
    powered = torch.where(nonzero, torch.where(nonzero, magnitude, 1.0).pow(p), 0.0)
    return F.normalize(powered.mean(dim=1).reshape(feature.shape[0], -1), dim=1)


def at_loss(
    student_features: Tensor | Sequence[Tensor],
    teacher_features: Tensor | Sequence[Tensor],
    *,
    p: float = 2.0,
    pool: bool = True,
    pair_reduction: PairReduction = "sum",
) -> Tensor:
    r"""Attention transfer: match the normalized spatial attention maps of paired layers.

    .. math::
        Q(F) = \frac{\mathrm{vec}(\frac{1}{C}\sum_c |F_c|^p)}
                    {\lVert \mathrm{vec}(\frac{1}{C}\sum_c |F_c|^p) \rVert_2}, \qquad
        \mathcal{L} = \sum_{j \in \text{pairs}} \frac{1}{B\,HW}
            \sum_{b} \big\lVert Q(F^s_{j,b}) - Q(F^t_{j,b}) \big\rVert_2^2

    From Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, in the form of
    their code and RepDistiller (squared difference averaged over batch and positions, summed over
    layer pairs). The paper's weight :math:`\beta = 1000` is **not** applied here: it is the
    term's weight (``Term(weight=1000.0)``), as RepDistiller's ``-b 1000``.

    Paired layers need not have the same number of channels (each map averages over its own
    channels). With ``pool=True`` a pair with different spatial sizes is compared after
    average-pooling the larger map to the smaller size, as RepDistiller does; ``pool=False``
    raises instead.

    Args:
        student_features: one ``[B, C, *spatial]`` map or a sequence of them.
        teacher_features: the teacher maps, paired with the student's by position.
        p: exponent of the activations, finite and ``> 0``.
        pool: pool mismatched spatial sizes to the smaller one (else an error).
        pair_reduction: ``"sum"`` (default, as the references) or ``"mean"`` over layer pairs.

    Example:
        >>> import torch
        >>> feats = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
        >>> at_loss(feats, [f.clone() for f in feats]).item()
        0.0
    """
    check_number("p", p, minimum=0.0, strict=True)
    students = _as_layer_list("student_features", student_features)
    teachers = _as_layer_list("teacher_features", teacher_features)
    if len(students) != len(teachers):
        raise ValueError(
            f"student_features and teacher_features must pair up, got {len(students)} student "
            f"and {len(teachers)} teacher layers"
        )
    pair_losses = []
    for index, (student, teacher) in enumerate(zip(students, teachers, strict=True)):
        names = (f"student_features[{index}]", f"teacher_features[{index}]")
        check_feature_map(names[0], student)
        check_feature_map(names[1], teacher)
        student, teacher = match_spatial_size(
            _scaled_maps(student, per_channel=False),
            _scaled_maps(teacher, per_channel=False),
            pool=pool,
            names=names,
        )
        difference = attention_map(student, p) - attention_map(teacher, p)
        pair_losses.append(difference.pow(2).mean())
    return _reduce_pairs(pair_losses, pair_reduction)


def nst_loss(student_feature: Tensor, teacher_feature: Tensor, *, pool: bool = True) -> Tensor:
    r"""Neuron selectivity transfer: MMD between the student's and teacher's channel maps.

    Each channel's spatial map is one "neuron" sample :math:`f_{i} \in \mathbb{R}^{HW}`,
    scaled to unit L2 norm; with the degree-2 polynomial kernel
    :math:`k(x, y) = (x^\top y)^2`, per sample

    .. math::
        \mathrm{MMD}^2 = \frac{1}{C_s^2}\sum_{i,i'} k(f^s_i, f^s_{i'})
            + \frac{1}{C_t^2}\sum_{j,j'} k(f^t_j, f^t_{j'})
            - \frac{2}{C_s C_t}\sum_{i,j} k(f^s_i, f^t_j)

    and the loss is its mean over the batch. From Huang & Wang, "Like What You Like: Knowledge
    Distill via Neuron Selectivity Transfer", 2017, in RepDistiller's form (which, unlike here,
    detaches the teacher-only term; the teacher is frozen, so the value and the student's
    gradient are the same). Channel counts may differ; spatial sizes are pooled to the
    smaller one (``pool=True``) or must match. RepDistiller's weight for this loss is 50.

    Example:
        >>> import torch
        >>> feature = torch.rand(2, 4, 3, 3)
        >>> abs(nst_loss(feature, feature.clone()).item()) < 1e-6
        True
    """
    check_feature_map("student_feature", student_feature)
    check_feature_map("teacher_feature", teacher_feature)
    student, teacher = match_spatial_size(
        _scaled_maps(upcast(student_feature, teacher_feature)),
        _scaled_maps(upcast(teacher_feature, student_feature)),
        pool=pool,
        names=("student_feature", "teacher_feature"),
    )
    student = unit_vectors(student.flatten(2), dim=2)
    teacher = unit_vectors(teacher.flatten(2), dim=2)

    def mean_kernel(first: Tensor, second: Tensor) -> Tensor:
        return torch.bmm(first, second.transpose(1, 2)).pow(2).mean(dim=(1, 2))

    mmd = (
        mean_kernel(student, student)
        + mean_kernel(teacher, teacher)
        - 2.0 * mean_kernel(student, teacher)
    )
    return mmd.mean()


def fsp_matrix(first: Tensor, second: Tensor, *, pool: bool = True) -> Tensor:
    r"""Flow-of-solution-procedure matrix :math:`G_{ij} = \frac{1}{HW}\sum_x F^1_{i,x} F^2_{j,x}`
    between two layers of one network; ``[B, C1, *sp], [B, C2, *sp] -> [B, C1, C2]``.

    Example:
        >>> import torch
        >>> fsp_matrix(torch.ones(1, 2, 3, 3), torch.full((1, 1, 3, 3), 2.0)).tolist()
        [[[2.0], [2.0]]]
    """
    first, second = match_spatial_size(first, second, pool=pool, names=("first", "second"))
    first, second = upcast(first, second).flatten(2), upcast(second, first).flatten(2)
    return torch.bmm(first, second.transpose(1, 2)) / first.shape[2]


def fsp_loss(
    student_features: Sequence[Tensor],
    teacher_features: Sequence[Tensor],
    *,
    pool: bool = True,
    pair_reduction: PairReduction = "sum",
) -> Tensor:
    r"""FSP loss: match the FSP matrices of consecutive layers of student and teacher.

    .. math::
        \mathcal{L} = \sum_{k=1}^{n-1} \frac{1}{B\,C_k C_{k+1}} \sum_b
            \big\lVert G^s_{k}(b) - G^t_{k}(b) \big\rVert_F^2, \qquad
        G_k = \mathrm{FSP}(F_k, F_{k+1})

    From Yim et al., "A Gift from Knowledge Distillation: Fast Optimization, Network
    Minimization and Transfer Learning", CVPR 2017 (equal pair weights, as RepDistiller, which
    uses it to pre-train the student before the main training). Each list holds the ``n >= 2``
    layers of one network in order; within one network, two consecutive layers of different
    resolution are pooled to the smaller one. Student layer ``k`` must have the teacher layer
    ``k``'s channel count (the matrices are compared entrywise).

    Example:
        >>> import torch
        >>> layers = [torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4, 4)]
        >>> fsp_loss(layers, [f.clone() for f in layers]).item()
        0.0
    """
    students = _as_layer_list("student_features", student_features)
    teachers = _as_layer_list("teacher_features", teacher_features)
    if len(students) != len(teachers) or len(students) < 2:
        raise ValueError(
            "fsp_loss needs the same number (>= 2) of student and teacher layers, got "
            f"{len(students)} student and {len(teachers)} teacher layers"
        )
    for side, layers in (("student_features", students), ("teacher_features", teachers)):
        for index, layer in enumerate(layers):
            check_feature_map(f"{side}[{index}]", layer)
    for index, (student, teacher) in enumerate(zip(students, teachers, strict=True)):
        if student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"student_features[{index}] {tuple(student.shape)} and teacher_features[{index}] "
                f"{tuple(teacher.shape)} must have the same batch size and channel count "
                "(FSP matrices are compared entrywise); add a conv1x1 adapter on the student side"
            )
    pair_losses = []
    for index in range(len(students) - 1):
        student_fsp = fsp_matrix(students[index], students[index + 1], pool=pool)
        teacher_fsp = fsp_matrix(teachers[index], teachers[index + 1], pool=pool)
        pair_losses.append((student_fsp - teacher_fsp).pow(2).mean())
    return _reduce_pairs(pair_losses, pair_reduction)


@register("hint", functional=hint_loss, signature="features", family="feature")
class HintLoss(nn.Module):
    """Module form of :func:`hint_loss`."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return hint_loss(student_feature, teacher_feature, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


@register(
    "at",
    functional=at_loss,
    signature="feature_lists",
    family="feature",
    compares_shapes=True,
)
class ATLoss(nn.Module):
    """Module form of :func:`at_loss`."""

    def __init__(
        self, p: float = 2.0, pool: bool = True, pair_reduction: PairReduction = "sum"
    ) -> None:
        super().__init__()
        _check_pair_reduction(pair_reduction)
        check_number("p", p, minimum=0.0, strict=True)
        self.p = p
        self.pool = pool
        self.pair_reduction = pair_reduction

    def forward(
        self,
        student_features: Tensor | Sequence[Tensor],
        teacher_features: Tensor | Sequence[Tensor],
    ) -> Tensor:
        return at_loss(
            student_features,
            teacher_features,
            p=self.p,
            pool=self.pool,
            pair_reduction=self.pair_reduction,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, pool={self.pool}, pair_reduction={self.pair_reduction!r}"


@register("nst", functional=nst_loss, signature="features", family="feature", compares_shapes=True)
class NSTLoss(nn.Module):
    """Module form of :func:`nst_loss`."""

    def __init__(self, pool: bool = True) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        return nst_loss(student_feature, teacher_feature, pool=self.pool)

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


@register("fsp", functional=fsp_loss, signature="feature_lists", family="feature")
class FSPLoss(nn.Module):
    """Module form of :func:`fsp_loss`."""

    def __init__(self, pool: bool = True, pair_reduction: PairReduction = "sum") -> None:
        super().__init__()
        _check_pair_reduction(pair_reduction)
        self.pool = pool
        self.pair_reduction = pair_reduction

    def forward(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> Tensor:
        return fsp_loss(
            student_features, teacher_features, pool=self.pool, pair_reduction=self.pair_reduction
        )

    def extra_repr(self) -> str:
        return f"pool={self.pool}, pair_reduction={self.pair_reduction!r}"
