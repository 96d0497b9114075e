"""Input validation and the one reduction helper shared by every torchkd loss.

Conventions (see DESIGN.md):
- the class (or feature) dimension is last: logits are ``[..., C]``, so ``[B, C]`` classifier
  logits and ``[B, L, V]`` token logits go through the same code;
- a loss first computes one value per *row* (every position of ``[...]``), then
  :func:`reduce_rows` turns the rows into the requested reduction;
- ``mask`` (bool, shape ``[...]``) selects rows; unselected rows never enter the arithmetic,
  so ``-inf``/NaN padding in them cannot leak into the loss or its gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["batchmean", "sum", "mean", "none"]
REDUCTIONS: tuple[str, ...] = ("batchmean", "sum", "mean", "none")


def check_floating(name: str, tensor: Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` is a floating-point tensor."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")


def check_pair(
    student: Tensor,
    teacher: Tensor,
    *,
    student_name: str = "student_logits",
    teacher_name: str = "teacher_logits",
    what: str = "classes",
) -> None:
    """Check that student and teacher tensors are floating and have the same shape.

    The message names the last-dimension mismatch explicitly (the common vocab-size bug:
    "student has 32000 classes, teacher 32064").
    """
    check_floating(student_name, student)
    check_floating(teacher_name, teacher)
    if student.dim() == 0:
        raise ValueError(f"{student_name} must have at least one dimension, got a scalar")
    if student.shape[-1] != teacher.shape[-1] and student.shape[:-1] == teacher.shape[:-1]:
        raise ValueError(
            f"student has {student.shape[-1]} {what}, teacher {teacher.shape[-1]} "
            f"({student_name} {tuple(student.shape)}, {teacher_name} {tuple(teacher.shape)})"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{student_name} and {teacher_name} must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def check_temperature(temperature: float | Tensor, rows_shape: torch.Size | None = None) -> None:
    """Temperature must be > 0: a number, a scalar tensor, or one value per row."""
    if isinstance(temperature, Tensor):
        if rows_shape is not None and temperature.dim() > 0 and temperature.shape != rows_shape:
            raise ValueError(
                f"temperature must be a scalar or have the rows' shape {tuple(rows_shape)}, "
                f"got {tuple(temperature.shape)}"
            )
        if not bool((temperature > 0).all()):
            raise ValueError(f"temperature must be > 0, got min {temperature.min().item():g}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def check_unit_interval(name: str, value: float) -> None:
    """Raise unless ``0 <= value <= 1``."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_labels(labels: Tensor, logits: Tensor, ignore_index: int | None = None) -> None:
    """Labels are integer class indices of shape ``logits.shape[:-1]`` within ``[0, C)``.

    Entries equal to ``ignore_index`` are allowed anywhere.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(logits.shape[:-1])} (the logits' shape without the "
            f"class dimension), got {tuple(labels.shape)}"
        )
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[-1]):
        raise ValueError(
            f"labels must be in [0, {logits.shape[-1]}) (number of classes), got values in "
            f"[{int(valid.min())}, {int(valid.max())}]"
        )


def check_mask(mask: Tensor | None, rows_shape: torch.Size) -> None:
    """A mask is a bool tensor with the rows' shape (the logits' shape without the last dim)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if mask.shape != rows_shape:
        raise ValueError(
            f"mask must have shape {tuple(rows_shape)} (one entry per row), got {tuple(mask.shape)}"
        )


def check_reduction(reduction: str) -> None:
    """Raise unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def select_rows(tensor: Tensor, mask: Tensor | None) -> Tensor:
    """Flatten ``[..., D]`` to ``[N, D]`` keeping only the rows selected by ``mask``."""
    flat = tensor.reshape(-1, tensor.shape[-1])
    return flat if mask is None else flat[mask.reshape(-1)]


def reduce_rows(
    row_values: Tensor,
    reduction: str,
    *,
    rows_shape: torch.Size,
    mask: Tensor | None = None,
    elements_per_row: int = 1,
) -> Tensor:
    """Reduce one loss value per selected row.

    Args:
        row_values: ``[N]`` values for the selected rows (rows flattened, masked rows removed).
        reduction: ``"batchmean"`` (sum / number of selected rows), ``"sum"``, ``"mean"``
            (sum / (selected rows x ``elements_per_row``), i.e. the mean over all elements as
            torch's ``reduction="mean"``), or ``"none"`` (shape ``rows_shape``, 0 at unselected
            rows).
        rows_shape: shape of the rows before flattening (the logits' shape without the last dim).
        mask: the row mask used to select the rows, or None.
        elements_per_row: number of elements each row's value summed over (the class count).

    Zero selected rows give a loss of exactly 0 whose gradient is zero, never NaN.
    """
    check_reduction(reduction)
    if reduction == "none":
        if mask is None:
            return row_values.reshape(rows_shape)
        out = row_values.new_zeros(mask.numel())
        return out.masked_scatter(mask.reshape(-1), row_values).reshape(rows_shape)
    total = row_values.sum()
    if reduction == "sum":
        return total
    count = row_values.shape[0] * (elements_per_row if reduction == "mean" else 1)
    return total / max(count, 1)
