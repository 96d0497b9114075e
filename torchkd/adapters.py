"""Shape adapters that map a student's tapped tensor onto the teacher's shape.

Built by probing: given the two shapes (batch dimension first), :func:`build_adapter` picks
the layer. With ``kind="auto"``:

=====================================  ==================================================
student → teacher                      adapter
=====================================  ==================================================
identical shapes                       ``nn.Identity``
``[B, C, H, W]``, channels differ      1×1 convolution + BatchNorm (FitNets regressor)
``[B, C, H, W]``, spatial size differs adaptive average pooling to the teacher's ``H, W``
both differ                            pooling, then 1×1 convolution + BatchNorm
``[B, D]``                             linear
``[B, L, D]``, only ``D`` differs      linear on the last dimension (token features)
``[B, C, L]``, ``C`` differs           1×1 convolution + BatchNorm (+ pooling if ``L`` differs)
=====================================  ==================================================

A rank-3 pair that differs only in the last dimension is read as token features
``[B, L, D]``; for channels-first ``[B, C, L]`` maps that differ only in length, ask for
``kind="pool"``. Explicit kinds always build their layer: ``"conv1x1"`` (pooling added when the
spatial size differs), ``"linear"`` (last dimension), ``"pool"`` (spatial dimensions), and
``"none"`` (identity, shapes unchecked: for losses that compare different shapes themselves).

Pooling before the 1×1 convolution gives the same values as after it (both are linear and act
on different axes) and costs less when the student map is the larger one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import nn

__all__ = ["ADAPTER_KINDS", "AdapterKind", "build_adapter"]

AdapterKind = Literal["auto", "conv1x1", "linear", "pool", "none"]
ADAPTER_KINDS: tuple[str, ...] = ("auto", "conv1x1", "linear", "pool", "none")

_CONV = {3: nn.Conv1d, 4: nn.Conv2d}
_BATCH_NORM = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d}
_POOL = {3: nn.AdaptiveAvgPool1d, 4: nn.AdaptiveAvgPool2d}


def build_adapter(
    student_shape: Sequence[int], teacher_shape: Sequence[int], kind: AdapterKind = "auto"
) -> nn.Module:
    """A module mapping tensors of ``student_shape`` to ``teacher_shape`` (see the module doc).

    Args:
        student_shape: shape of the student's tensor, batch first.
        teacher_shape: shape of the teacher's tensor, batch first.
        kind: ``"auto"``, ``"conv1x1"``, ``"linear"``, ``"pool"`` or ``"none"``.

    Raises:
        ValueError: unknown ``kind``; ranks or batch sizes differ; or ``kind`` cannot map one
            shape onto the other. The message names both shapes.

    Example:
        >>> adapter = build_adapter((8, 16, 4, 4), (8, 32, 2, 2))
        >>> [type(layer).__name__ for layer in adapter]
        ['AdaptiveAvgPool2d', 'Conv2d', 'BatchNorm2d']
        >>> build_adapter((8, 64), (8, 128))
        Linear(in_features=64, out_features=128, bias=True)
    """
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"adapter kind must be one of {ADAPTER_KINDS}, got {kind!r}")
    student, teacher = tuple(student_shape), tuple(teacher_shape)
    shapes = f"student shape {student}, teacher shape {teacher}"
    if kind == "none":
        return nn.Identity()
    if len(student) != len(teacher):
        raise ValueError(f"cannot adapt tensors of different ranks: {shapes}")
    if len(student) < 2:
        raise ValueError(f"adapters need a batch and a feature dimension: {shapes}")
    if student[0] != teacher[0]:
        raise ValueError(f"batch sizes differ ({student[0]} vs {teacher[0]}): {shapes}")
    if kind == "auto":
        if student == teacher:
            return nn.Identity()
        kind = _auto_kind(student, teacher, shapes)
    if kind == "linear":
        if student[:-1] != teacher[:-1]:
            raise ValueError(
                f"a linear adapter maps only the last dimension, the others must match: {shapes}"
            )
        return nn.Linear(student[-1], teacher[-1])
    return _conv_or_pool(student, teacher, kind, shapes)


def _auto_kind(student: tuple[int, ...], teacher: tuple[int, ...], shapes: str) -> str:
    rank = len(student)
    if rank == 2:
        return "linear"
    if rank == 3 and student[1] == teacher[1]:
        return "linear"
    if rank in (3, 4):
        return "conv1x1" if student[1] != teacher[1] else "pool"
    raise ValueError(
        f"no automatic adapter for rank-{rank} tensors ({shapes}); automatic adapters cover "
        "[B, D], [B, L, D], [B, C, L] and [B, C, H, W]: pass an explicit kind such as 'linear'"
    )


def _conv_or_pool(
    student: tuple[int, ...], teacher: tuple[int, ...], kind: str, shapes: str
) -> nn.Module:
    rank = len(student)
    if rank not in _CONV:
        raise ValueError(f"adapter {kind!r} needs [B, C, L] or [B, C, H, W] tensors: {shapes}")
    layers: list[nn.Module] = []
    if student[2:] != teacher[2:]:
        layers.append(_POOL[rank](teacher[2:] if rank == 4 else teacher[2]))
    if kind == "conv1x1":
        layers += [
            _CONV[rank](student[1], teacher[1], kernel_size=1, bias=False),
            _BATCH_NORM[rank](teacher[1]),
        ]
    elif student[1] != teacher[1]:
        raise ValueError(f"pooling keeps the channels, which differ: {shapes}; use 'conv1x1'")
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)
