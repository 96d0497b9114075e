"""Attention-weighted layer alignment: each student layer learns which teacher layers guide it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkd.losses._common import check_floating, check_number, upcast
from torchkd.losses._feature_common import ChannelLinear, pool_to_size
from torchkd.losses.registry import Shapes, register

__all__ = ["AttentionAlignLoss", "attention_align_loss", "layer_attention"]


def layer_attention(queries: Tensor, keys: Tensor) -> Tensor:
    r"""Scaled dot-product attention of student layers over teacher layers.

    :math:`\alpha_{b,s,t} = \mathrm{softmax}_t(q_{b,s} \cdot k_{b,t} / \sqrt{d})`;
    ``queries [B, S, d]``, ``keys [B, T, d] -> [B, S, T]``, each row summing to 1.

    Example:
        >>> import torch
        >>> layer_attention(torch.zeros(1, 2, 4), torch.randn(1, 3, 4)).sum(dim=-1).tolist()
        [[1.0, 1.0]]
    """
    check_floating("queries", queries)
    check_floating("keys", keys)
    if queries.dim() != 3 or keys.dim() != 3 or queries.shape[::2] != keys.shape[::2]:
        raise ValueError(
            "queries must be [B, S, d] and keys [B, T, d] with the same B and d, got "
            f"{tuple(queries.shape)} and {tuple(keys.shape)}"
        )
    logits = upcast(queries, keys) @ upcast(keys, queries).transpose(1, 2)
    logits = logits / math.sqrt(queries.shape[-1])
    return logits.softmax(dim=-1)


def attention_align_loss(queries: Tensor, keys: Tensor, pair_distances: Tensor) -> Tensor:
    r"""Attention-weighted sum of the student-to-teacher layer distances.

    .. math::
        \mathcal{L} = \frac{1}{B} \sum_b \sum_s \sum_t \alpha_{b,s,t}\, d_{b,s,t},
        \qquad \alpha_{b,s,t} = \mathrm{softmax}_t\Big(\frac{q_{b,s} \cdot k_{b,t}}{\sqrt d}\Big)

    Args:
        queries: ``[B, S, d]`` one query per sample and student layer.
        keys: ``[B, T, d]`` one key per sample and teacher layer.
        pair_distances: ``[B, S, T]`` distance of each (adapted) student layer to each teacher
            layer, per sample.

    Example:
        >>> import torch
        >>> distances = torch.tensor([[[1.0, 3.0]]])
        >>> attention_align_loss(torch.zeros(1, 1, 2), torch.zeros(1, 2, 2), distances).item()
        2.0
    """
    weights = layer_attention(queries, keys)
    check_floating("pair_distances", pair_distances)
    if pair_distances.shape != weights.shape:
        raise ValueError(
            f"pair_distances must be [B, S, T] = {tuple(weights.shape)} (from queries "
            f"{tuple(queries.shape)} and keys {tuple(keys.shape)}), got "
            f"{tuple(pair_distances.shape)}"
        )
    return (weights * upcast(pair_distances, weights)).sum(dim=(1, 2)).mean()


def _global_pool(feature: Tensor) -> Tensor:
    """``[B, C, *spatial] -> [B, C]`` by averaging the positions; ``[B, C]`` unchanged."""
    return feature.flatten(2).mean(dim=2) if feature.dim() > 2 else feature


def _channel_lists(student: Shapes, teacher: Shapes) -> dict[str, Any]:
    """Per-layer channel counts from the probed shapes."""
    return {
        "student_channels": [shape[1] for shape in student],
        "teacher_channels": [shape[1] for shape in teacher],
    }


@register(
    "attention_align",
    functional=None,
    signature="feature_lists",
    family="feature",
    compares_shapes=True,
    sizes=_channel_lists,
)
class AttentionAlignLoss(nn.Module):
    r"""Per-sample attention of every student layer over every teacher layer.

    For student layer :math:`s` and teacher layer :math:`t` (features of sample :math:`b`):

    .. math::
        q_{b,s} = W^q_s\,\mathrm{gap}(F^s_{b,s}), \quad
        k_{b,t} = W^k_t\,\mathrm{gap}(F^t_{b,t}), \quad
        d_{b,s,t} = \mathrm{mean}\big((A_{s,t}(F^s_{b,s}) - F^t_{b,t})^2\big)

    and the loss is :func:`attention_align_loss` of :math:`(q, k, d)`: each student layer is
    pulled toward a per-sample convex combination of the teacher layers, with weights the
    student learns. ``gap`` averages the spatial positions; the adapter :math:`A_{s,t}` is an
    adaptive average pool to the teacher layer's spatial size followed by a 1x1 convolution
    (for a ``[B, D]`` teacher layer: global pooling and a linear map). Feature maps of
    different spatial ranks cannot be paired; a ``[B, D]`` student layer can only be paired
    with ``[B, D]`` teacher layers.

    In the spirit of Ji et al., "Show, Attend and Distill: Knowledge Distillation via
    Attention-based Feature Matching", AAAI 2021, which instead lets the teacher layers query
    the student layers, adds learned layer embeddings and compares channel-averaged attention
    maps; here the raw teacher features are the targets. The attention may concentrate on the
    easiest teacher layer; that is part of the method.

    The engine builds it with the channel counts it probed (``student_channels``,
    ``teacher_channels``: dim 1 of each tapped layer, in order); the adapters are inside, so
    the term needs no engine adapter (``Term(adapter="none")``).

    Args:
        student_channels: channels of each student layer.
        teacher_channels: channels of each teacher layer.
        embed_dim: query/key width :math:`d`.

    Example:
        >>> import torch
        >>> loss = AttentionAlignLoss([4, 8], [6, 12, 16], embed_dim=16)
        >>> students = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
        >>> teachers = [torch.randn(2, 6, 8, 8), torch.randn(2, 12, 4, 4), torch.randn(2, 16)]
        >>> loss.attention_weights(students, teachers).shape
        torch.Size([2, 2, 3])
        >>> loss(students, teachers).shape
        torch.Size([])
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        if not student_channels or not teacher_channels:
            raise ValueError("student_channels and teacher_channels must each list >= 1 layer")
        for side, channels in (
            ("student_channels", student_channels),
            ("teacher_channels", teacher_channels),
        ):
            for index, count in enumerate(channels):
                check_number(f"{side}[{index}]", count, minimum=1, integer=True)
        check_number("embed_dim", embed_dim, minimum=1, integer=True)
        self.student_channels = list(student_channels)
        self.teacher_channels = list(teacher_channels)
        self.embed_dim = embed_dim
        self.queries = nn.ModuleList(nn.Linear(c, embed_dim) for c in self.student_channels)
        self.keys = nn.ModuleList(nn.Linear(c, embed_dim) for c in self.teacher_channels)
        self.adapters = nn.ModuleList(
            nn.ModuleList(ChannelLinear(c_s, c_t) for c_t in self.teacher_channels)
            for c_s in self.student_channels
        )

    def _check(self, side: str, features: Sequence[Tensor], channels: list[int]) -> list[Tensor]:
        if isinstance(features, Tensor) or len(features) != len(channels):
            count = "a tensor" if isinstance(features, Tensor) else f"{len(features)} layers"
            raise ValueError(f"{side} must be a list of {len(channels)} layers, got {count}")
        for index, (feature, expected) in enumerate(zip(features, channels, strict=True)):
            check_floating(f"{side}[{index}]", feature)
            if feature.dim() < 2 or feature.shape[1] != expected:
                raise ValueError(
                    f"{side}[{index}] must be [B, {expected}, ...] as configured, got "
                    f"{tuple(feature.shape)}"
                )
        dtype = self.queries[0].weight.dtype
        return [feature.to(dtype) for feature in features]

    def _validated(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        students = self._check("student_features", student_features, self.student_channels)
        teachers = self._check("teacher_features", teacher_features, self.teacher_channels)
        batch_sizes = {feature.shape[0] for feature in students + teachers}
        if len(batch_sizes) != 1:
            raise ValueError(f"all features must have the same batch size, got {batch_sizes}")
        for s_index, student in enumerate(students):
            for t_index, teacher in enumerate(teachers):
                if teacher.dim() > 2 and student.dim() != teacher.dim():
                    raise ValueError(
                        f"student_features[{s_index}] {tuple(student.shape)} cannot be adapted "
                        f"to teacher_features[{t_index}] {tuple(teacher.shape)}: different "
                        "spatial ranks"
                    )
        return students, teachers

    def attention_weights(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> Tensor:
        """The attention ``[B, S, T]`` of each student layer over the teacher layers."""
        students, teachers = self._validated(student_features, teacher_features)
        return layer_attention(*self._queries_keys(students, teachers))

    def _queries_keys(
        self, students: list[Tensor], teachers: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        queries = torch.stack(
            [project(_global_pool(f)) for project, f in zip(self.queries, students, strict=True)],
            dim=1,
        )
        keys = torch.stack(
            [project(_global_pool(f)) for project, f in zip(self.keys, teachers, strict=True)],
            dim=1,
        )
        return queries, keys

    def pair_distances(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> Tensor:
        """Mean squared error ``[B, S, T]`` of each adapted student layer to each teacher layer."""
        students, teachers = self._validated(student_features, teacher_features)
        return self._pair_distances(students, teachers)

    def _pair_distances(self, students: list[Tensor], teachers: list[Tensor]) -> Tensor:
        rows = []
        for student, adapters in zip(students, self.adapters, strict=True):
            row = []
            for teacher, adapter in zip(teachers, adapters, strict=True):
                if teacher.dim() == 2:
                    resized = _global_pool(student)
                else:
                    resized = pool_to_size(student, teacher.shape[2:])
                squared = (adapter(resized) - teacher).pow(2)
                row.append(squared.flatten(1).mean(dim=1))
            rows.append(torch.stack(row, dim=1))
        return torch.stack(rows, dim=1)

    def forward(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> Tensor:
        students, teachers = self._validated(student_features, teacher_features)
        queries, keys = self._queries_keys(students, teachers)
        return attention_align_loss(queries, keys, self._pair_distances(students, teachers))

    def extra_repr(self) -> str:
        return (
            f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
            f"embed_dim={self.embed_dim}"
        )


# functional=None: the loss owns trainable projections; attention_align_loss takes (q, k, d).
