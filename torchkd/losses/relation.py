"""Relation-level distillation: match the structure *between* samples of a batch.

Each loss turns a batch of student and teacher representations into batch-by-batch (or
batch-cubed) relation tensors and compares those, so the student and teacher feature sizes may
differ. The losses are computed for the whole batch; there is no per-row reduction.

Both sides are differentiable: torchkd's teachers are frozen (no gradient reaches them), and a
differentiable teacher side lets ``gradcheck`` test every input.

All three losses are invariant to the scale of each side's representations, so each side is
first divided by its largest magnitude: values near the float32 range do not overflow. They
compute in float32 at least and return float32 for half-precision inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    largest_magnitude,
    unit_vectors,
    upcast,
)
from torchkd.losses.registry import register

__all__ = ["CCLoss", "RKDLoss", "SPLoss", "cc_loss", "rkd_loss", "sp_loss"]


def _check_batch_pair(
    student: Tensor, teacher: Tensor, student_name: str, teacher_name: str, *, min_batch: int = 1
) -> None:
    """Both floating, at least ``[B, D]``, the same batch size ``B >= min_batch``."""
    check_floating(student_name, student)
    check_floating(teacher_name, teacher)
    for name, tensor in ((student_name, student), (teacher_name, teacher)):
        if tensor.dim() < 2:
            raise ValueError(
                f"{name} must have shape [B, ...] with at least 2 dims, got {tuple(tensor.shape)}"
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{student_name} and {teacher_name} must have the same batch size, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[0] < min_batch:
        raise ValueError(
            f"{student_name} needs a batch of at least {min_batch} samples to form relations, "
            f"got shape {tuple(student.shape)}"
        )


def _flat_compute(tensor: Tensor, other: Tensor) -> Tensor:
    """``[B, ...] -> [B, D]`` in the compute dtype, divided by its largest magnitude."""
    flat = upcast(tensor, other).reshape(tensor.shape[0], -1)
    return flat / largest_magnitude(flat, (0, 1))


def _check_rkd_hyperparameters(distance_weight: float, angle_weight: float, eps: float) -> None:
    check_number("distance_weight", distance_weight, minimum=0.0)
    check_number("angle_weight", angle_weight, minimum=0.0)
    check_number("eps", eps, minimum=0.0)


def _pairwise_distances(embedding: Tensor, eps: float) -> Tensor:
    """Euclidean distance matrix ``[B, B]``: squared distances floored at ``eps``, zero diagonal.

    Computed from the differences (not ``|a|^2 + |b|^2 - 2 a.b``, which cancels for close
    points); a zero distance (diagonal, or coincident samples with ``eps = 0``) gets a zero
    gradient instead of the square root's infinite one.
    """
    squared = (embedding[:, None, :] - embedding[None, :, :]).square().sum(dim=2).clamp(min=eps)
    off_diagonal = ~torch.eye(embedding.shape[0], dtype=torch.bool, device=embedding.device)
    usable = off_diagonal & (squared > 0)
    return torch.where(usable, torch.where(usable, squared, 1.0).sqrt(), 0.0)


def _normalized_distances(embedding: Tensor, eps: float) -> Tensor:
    """Distance matrix divided by the mean of its positive entries (unchanged if there are none)."""
    distances = _pairwise_distances(embedding, eps)
    positive = (distances > 0).sum()
    mean = distances.sum() / positive.clamp(min=1)
    return distances / torch.where(positive > 0, mean, 1.0)


def _triplet_angles(embedding: Tensor) -> Tensor:
    """``[B, B, B]`` with entry ``[a, b, c]`` = cosine of the angle at vertex ``a`` of (b, a, c)."""
    differences = embedding[None, :, :] - embedding[:, None, :]  # [a, b] = x_b - x_a
    directions = unit_vectors(differences, dim=2)
    return directions @ directions.transpose(1, 2)


def rkd_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
) -> Tensor:
    r"""Relational knowledge distillation (Park et al., "Relational Knowledge Distillation",
    CVPR 2019).

    With :math:`d_{ij} = \sqrt{\max(\lVert x_i - x_j \rVert^2, \epsilon)}` (zero on the diagonal),
    :math:`\mu = ` the mean of the positive :math:`d_{ij}`, and
    :math:`e_{ij} = (x_j - x_i) / \lVert x_j - x_i \rVert`:

    .. math::
        \mathcal{L} = w_d \,\mathrm{mean}_{ij}\, \ell_\delta\!\Big(\frac{d^s_{ij}}{\mu^s},
        \frac{d^t_{ij}}{\mu^t}\Big)
        + w_a \,\mathrm{mean}_{ijk}\, \ell_\delta\big(\langle e^s_{ij}, e^s_{ik} \rangle,
        \langle e^t_{ij}, e^t_{ik} \rangle\big)

    where :math:`\ell_\delta` is the smooth-L1 (Huber, :math:`\delta = 1`) loss. The means run over
    all :math:`B^2` distance and :math:`B^3` angle entries (diagonal zeros included), as in the
    authors' and RepDistiller's code. Student and teacher sizes ``D`` and ``D'`` may differ: only
    relations are compared. Inputs ``[B, ...]`` are flattened to ``[B, D]``. A weight of 0 skips
    its term (the angle term costs ``B^3`` memory). Unlike RepDistiller, the teacher side is not
    wrapped in ``no_grad`` (torchkd teachers are frozen anyway).

    Args:
        student_embedding: ``[B, D]`` student representations, ``B >= 2``.
        teacher_embedding: ``[B, D']`` teacher representations.
        distance_weight: :math:`w_d` (25 in the paper's setup).
        angle_weight: :math:`w_a` (50).
        eps: floor on squared distances before the square root, ``>= 0``. The embedding is
            first divided by its largest magnitude (the loss does not change), so ``eps``
            floors distances relative to that scale.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
        >>> round(rkd_loss(x, 3.0 * x).item(), 6)  # scaled copies share every relation
        0.0
        >>> rkd_loss(x, torch.randn(3, 5)).item() > 0
        True
    """
    _check_batch_pair(
        student_embedding, teacher_embedding, "student_embedding", "teacher_embedding", min_batch=2
    )
    _check_rkd_hyperparameters(distance_weight, angle_weight, eps)
    student = _flat_compute(student_embedding, teacher_embedding)
    teacher = _flat_compute(teacher_embedding, student_embedding)
    loss = student.new_zeros(())
    if distance_weight:
        distance_term = F.smooth_l1_loss(
            _normalized_distances(student, eps), _normalized_distances(teacher, eps)
        )
        loss = loss + distance_weight * distance_term
    if angle_weight:
        angle_term = F.smooth_l1_loss(_triplet_angles(student), _triplet_angles(teacher))
        loss = loss + angle_weight * angle_term
    return loss


@register(
    "rkd",
    functional=rkd_loss,
    signature="embeddings",
    family="relation",
    compares_shapes=True,
)
class RKDLoss(nn.Module):
    """Module form of :func:`rkd_loss`."""

    def __init__(
        self, distance_weight: float = 25.0, angle_weight: float = 50.0, eps: float = 1e-12
    ) -> None:
        super().__init__()
        _check_rkd_hyperparameters(distance_weight, angle_weight, eps)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight
        self.eps = eps

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        return rkd_loss(
            student_embedding,
            teacher_embedding,
            distance_weight=self.distance_weight,
            angle_weight=self.angle_weight,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


def _row_normalized_gram(feature: Tensor, other: Tensor) -> Tensor:
    flat = _flat_compute(feature, other)
    return unit_vectors(flat @ flat.T, dim=1)


def _sp_pair(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    _check_batch_pair(student_feature, teacher_feature, "student_feature", "teacher_feature")
    batch_size = student_feature.shape[0]
    difference = _row_normalized_gram(student_feature, teacher_feature) - _row_normalized_gram(
        teacher_feature, student_feature
    )
    return difference.pow(2).sum() / batch_size**2


def sp_loss(
    student_feature: Tensor | Sequence[Tensor], teacher_feature: Tensor | Sequence[Tensor]
) -> Tensor:
    r"""Similarity-preserving distillation (Tung & Mori, "Similarity-Preserving Knowledge
    Distillation", ICCV 2019).

    With :math:`F \in \mathbb{R}^{B \times D}` the flattened features and
    :math:`G = \mathrm{rownorm}(F F^\top)` (each row divided by its L2 norm):

    .. math::
        \mathcal{L} = \frac{1}{B^2} \lVert G^s - G^t \rVert_F^2

    Features may have any shapes ``[B, ...]`` with the same batch size; ``D`` may differ between
    student and teacher. Lists of layer outputs (paired by position) give the sum of the
    per-pair losses, as RepDistiller's training script sums them.

    Args:
        student_feature: ``[B, ...]`` tensor, or a sequence of them.
        teacher_feature: the teacher's counterpart(s), same count.

    Example:
        >>> import torch
        >>> features = torch.randn(4, 3, 2, 2)
        >>> round(sp_loss(features, 2.0 * features.flatten(1)).item(), 6)  # same Gram up to scale
        0.0
        >>> sp_loss([features, features], [torch.randn(4, 7), features]).item() > 0
        True
    """
    if isinstance(student_feature, Tensor) and isinstance(teacher_feature, Tensor):
        return _sp_pair(student_feature, teacher_feature)
    if isinstance(student_feature, Tensor) or isinstance(teacher_feature, Tensor):
        raise TypeError(
            "student_feature and teacher_feature must both be tensors or both be sequences, got "
            f"{type(student_feature).__name__} and {type(teacher_feature).__name__}"
        )
    student_list, teacher_list = list(student_feature), list(teacher_feature)
    if not student_list or len(student_list) != len(teacher_list):
        raise ValueError(
            "student_feature and teacher_feature must be non-empty sequences of the same length, "
            f"got {len(student_list)} and {len(teacher_list)}"
        )
    losses = [_sp_pair(s, t) for s, t in zip(student_list, teacher_list, strict=True)]
    return torch.stack(losses).sum()


@register("sp", functional=sp_loss, signature="features", family="relation", compares_shapes=True)
class SPLoss(nn.Module):
    """Module form of :func:`sp_loss` (no hyperparameters)."""

    def forward(
        self,
        student_feature: Tensor | Sequence[Tensor],
        teacher_feature: Tensor | Sequence[Tensor],
    ) -> Tensor:
        return sp_loss(student_feature, teacher_feature)


def _check_cc_hyperparameters(gamma: float, order: int) -> None:
    check_number("gamma", gamma, minimum=0.0, strict=True)
    check_number("order", order, minimum=0, integer=True)


def _rbf_correlation(embedding: Tensor, other: Tensor, gamma: float, order: int) -> Tensor:
    """Order-``order`` Taylor expansion of the Gaussian RBF kernel on L2-normalized rows."""
    unit = unit_vectors(_flat_compute(embedding, other), dim=1)
    cosine = unit @ unit.T
    correlation = torch.zeros_like(cosine)
    for power in range(order + 1):
        coefficient = math.exp(-2.0 * gamma) * (2.0 * gamma) ** power / math.factorial(power)
        correlation = correlation + coefficient * cosine.pow(power)
    return correlation


def cc_loss(
    student_embedding: Tensor, teacher_embedding: Tensor, *, gamma: float = 0.4, order: int = 2
) -> Tensor:
    r"""Correlation congruence (Peng et al., "Correlation Congruence for Knowledge Distillation",
    ICCV 2019), with the paper's Gaussian-RBF correlation.

    Rows are L2-normalized (:math:`\hat x_i = x_i / \lVert x_i \rVert`), so
    :math:`\exp(-\gamma \lVert \hat x_i - \hat x_j \rVert^2) = e^{-2\gamma} e^{2\gamma \hat x_i^\top
    \hat x_j}`, which the paper expands to order :math:`P`:

    .. math::
        C_{ij} = \sum_{p=0}^{P} e^{-2\gamma} \frac{(2\gamma)^p}{p!}
        (\hat x_i^\top \hat x_j)^p, \qquad
        \mathcal{L} = \frac{1}{B^2} \lVert C^s - C^t \rVert_F^2

    The paper feeds both networks through embedding heads of the same size; the correlation
    matrix is ``[B, B]`` whatever ``D``, so differing sizes are accepted here too. Note:
    RepDistiller's ``Correlation`` is a different, simplified loss
    (:math:`\mathrm{mean}_i \sum_d |s_i - t_i|_d\, |s_{i+1} - t_{i+1}|_d`, needing equal
    ``D``); this function implements the paper's kernel, the version the paper reports.

    Args:
        student_embedding: ``[B, D]`` (inputs ``[B, ...]`` are flattened).
        teacher_embedding: ``[B, D']``.
        gamma: RBF kernel width :math:`\gamma > 0` (0.4 in the paper's CIFAR setup).
        order: Taylor order :math:`P \ge 0` (2).

    Example:
        >>> import torch
        >>> x = torch.randn(4, 8)
        >>> round(cc_loss(x, 5.0 * x).item(), 6)  # the kernel sees directions only
        0.0
        >>> cc_loss(x, torch.randn(4, 8)).item() > 0
        True
    """
    _check_batch_pair(
        student_embedding, teacher_embedding, "student_embedding", "teacher_embedding"
    )
    _check_cc_hyperparameters(gamma, order)
    difference = _rbf_correlation(
        student_embedding, teacher_embedding, gamma, order
    ) - _rbf_correlation(teacher_embedding, student_embedding, gamma, order)
    batch_size = student_embedding.shape[0]
    return difference.pow(2).sum() / batch_size**2


@register("cc", functional=cc_loss, signature="embeddings", family="relation", compares_shapes=True)
class CCLoss(nn.Module):
    """Module form of :func:`cc_loss`."""

    def __init__(self, gamma: float = 0.4, order: int = 2) -> None:
        super().__init__()
        _check_cc_hyperparameters(gamma, order)
        self.gamma = gamma
        self.order = order

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        return cc_loss(student_embedding, teacher_embedding, gamma=self.gamma, order=self.order)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, order={self.order}"
