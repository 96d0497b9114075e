"""Input validation, the one float32 upcast helper and the one reduction helper of every loss.

Conventions (see DESIGN.md):
- the class (or feature) dimension is last: logits are ``[..., C]``, so ``[B, C]`` classifier
  logits and ``[B, L, V]`` token logits go through the same code;
- a loss first computes one value per *row* (every position of ``[...]``), then
  :func:`reduce_rows` turns the rows into the requested reduction;
- ``mask`` (bool, shape ``[...]``) selects rows; unselected rows never enter the arithmetic,
  so ``-inf``/NaN padding in them cannot leak into the loss or its gradient;
- precision: every loss computes in :func:`compute_dtype` (float32 at least, accumulating sums
  in float32 for float16/bfloat16 inputs) and returns its value in that dtype: float32 for half
  inputs. A float32 student with a float64 teacher is promoted to float64 (never refused);
- an empty input (a tensor with no elements, e.g. a batch of 0 samples) is refused with a
  ``ValueError`` naming the argument; rows that a ``mask`` or ``ignore_index`` leaves out are
  not an empty input: with none left the loss is exactly 0 with a zero gradient;
- hyperparameters are checked up front: a wrong type is a ``TypeError`` and a value out of
  range (NaN and infinities included) a ``ValueError``, both naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["batchmean", "sum", "mean", "none"]
REDUCTIONS: tuple[str, ...] = ("batchmean", "sum", "mean", "none")
# Softmax temperatures above this are refused: at T = 1e6 the softened distributions of float32
# logits differ by ~1e-6, and their divergence (~1e-12, times T^2) is still resolved in float64.
MAX_TEMPERATURE = 1e6
# A divergence row is recomputed in float64 when its float32 rounding (after T^2) exceeds both
# ABSOLUTE_TOLERANCE and 1 / PRECISION_FACTOR of its value (see unresolved_divergences).
PRECISION_FACTOR = 1024.0
ABSOLUTE_TOLERANCE = 1e-4


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss computes and returns in: the promotion of the inputs and float32.

    float16/bfloat16 inputs are computed (and their sums accumulated) in float32; a float64
    input promotes the computation to float64.
    """
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def upcast(tensor: Tensor, *others: Tensor) -> Tensor:
    """``tensor`` in :func:`compute_dtype` of itself and ``others`` (no copy if already there).

    The one float32 upcast of the losses layer: ``student, teacher = upcast(student, teacher),
    upcast(teacher, student)`` puts both sides in the same dtype, float32 at least.
    """
    return tensor.to(compute_dtype(tensor, *others))


def jsd_log_ratios(log_ratio: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(log(q / m), log(p / m))`` of the JSD(β) mixture ``m = β q + (1 - β) p``, from the
    log-ratio ``d = log q - log p`` alone:

    .. math::
        \\log\\frac{p}{m} = -\\operatorname{logaddexp}(\\log\\beta + d, \\log(1-\\beta)),
        \\qquad
        \\log\\frac{q}{m} = -\\operatorname{logaddexp}(\\log\\beta, \\log(1-\\beta) - d).

    ``log p - log m`` with ``log m`` formed on its own loses everything near the endpoints: for
    ``β = 1e-6``, ``log(p / m) ≈ β (1 - q / p)`` is ~1e-6 while each log is rounded by
    ``ε |log p|``. In this form each ratio is rounded relative to its own size (``logaddexp`` of
    ``log(1-β) ≈ -β`` and a small term is ``log1p`` of it), so JSD(β) keeps float32 precision
    for every ``β`` in (0, 1). ``β = 0`` (``m = p``, the skew KLs' limit) gives ``(d, 0)``
    through ``log β = -inf``. ``d`` is NaN where ``p = q = 0``; the caller masks those classes.
    """
    log_beta, log_rest = math.log(beta) if beta > 0 else -math.inf, math.log1p(-beta)
    student_ratio = -torch.logaddexp(log_ratio + log_beta, log_ratio.new_tensor(log_rest))
    teacher_ratio = -torch.logaddexp(log_rest - log_ratio, log_ratio.new_tensor(log_beta))
    return teacher_ratio, student_ratio


def divide_finite(values: Tensor, divisor: float | Tensor) -> Tensor:
    """``values / divisor`` with ``-inf`` entries (masked classes) kept out of the division.

    ``-inf / T`` is ``-inf`` but its derivative in ``T`` is NaN (``inf * 0`` in the backward
    pass), even where the loss does not depend on the entry: a learned temperature needs this.
    """
    masked = values == float("-inf")
    return torch.where(masked, float("-inf"), torch.where(masked, 0.0, values) / divisor)


def unresolved_divergences(
    rows: Tensor, num_classes: int, temperature: float | Tensor, weight: float = 1.0
) -> Tensor:
    """Divergence rows (before the ``T^2`` factor) to recompute in float64.

    A row is a difference of log-normalizers, each rounded by about ``eps * log C``; after the
    ``T^2`` factor that rounding is ``r = weight * T^2 * eps * log C``. Flagged: non-finite rows,
    and rows where ``r`` exceeds ``ABSOLUTE_TOLERANCE`` *and* ``1 / PRECISION_FACTOR`` of the
    row's value (or the value is negative). At ordinary temperatures (``r`` ~ 1e-5 in float32
    at ``T = 4``) nothing but non-finite rows is redone; at ``T = 1e4``, where ``z / T`` of
    student and teacher differ by ~1e-4 and the float32 value is mostly rounding, every row is.
    ``temperature`` is a number or one value per row.
    """
    rounding = weight * torch.finfo(rows.dtype).eps * max(1.0, math.log(num_classes))
    scaled_rounding = rounding * temperature**2
    relevant = scaled_rounding > ABSOLUTE_TOLERANCE
    imprecise = rows < PRECISION_FACTOR * rounding
    return ~torch.isfinite(rows) | (imprecise & relevant)


def with_float64_rows(
    row_fn: Callable[..., Tensor],
    row_tensors: tuple[Tensor, ...],
    imprecise: Callable[[Tensor], Tensor],
) -> Tensor:
    """``row_fn(*row_tensors)`` (one value per row), with the rows float32 cannot resolve redone
    in float64.

    ``imprecise(rows)`` flags rows (non-finite where the true value is representable, or too
    small next to their rounding error); those rows are recomputed from float64 copies and
    returned in the compute dtype, with their gradients. Rows are dim 0 of every tensor. Other
    rows are computed as usual (the first, flagged pass is discarded), so gradients stay finite.
    Skipped for float64 and on devices without float64 (MPS).
    """
    rows = row_fn(*row_tensors)
    if rows.dtype == torch.float64 or rows.device.type == "mps" or rows.numel() == 0:
        return rows
    with torch.no_grad():
        redo = imprecise(rows.detach())
    if not bool(redo.any()):
        return rows
    keep = ~redo

    def part(selected: Tensor, wide: bool) -> tuple[Tensor, ...]:
        return tuple(
            t[selected].double() if wide and t.is_floating_point() else t[selected]
            for t in row_tensors
        )

    combined = rows.new_zeros(rows.shape).index_put((keep,), row_fn(*part(keep, False)))
    return combined.index_put((redo,), row_fn(*part(redo, True)).to(rows.dtype))


def largest_magnitude(values: Tensor, dims: int | tuple[int, ...]) -> Tensor:
    """``max |values|`` over ``dims`` (kept, detached), 1 where that maximum is 0.

    Dividing by it before squaring keeps values near the float32 range from overflowing; the
    losses that use it are invariant to the scale, so their value and gradient are unchanged.
    """
    largest = values.detach().abs().amax(dim=dims, keepdim=True)
    return torch.where(largest > 0, largest, 1.0)


def unit_vectors(values: Tensor, dim: int, eps: float = 1e-12) -> Tensor:
    """``F.normalize(values, dim=dim)`` that does not overflow for entries near the dtype's max.

    Each vector is first divided by its largest magnitude; an all-zero vector stays zero.
    """
    return F.normalize(values / largest_magnitude(values, dim), dim=dim, eps=eps)


def check_floating(name: str, tensor: Tensor) -> None:
    """Raise unless ``tensor`` is a non-empty floating-point tensor.

    ``TypeError`` for a non-tensor or an integer tensor; ``ValueError`` for a tensor with no
    elements (an empty batch is refused by every loss, see the module docstring).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(tensor.shape)}): a loss needs at least one sample; "
            "skip empty batches before the loss"
        )


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    strict: bool = False,
    integer: bool = False,
) -> None:
    """A finite real number (an ``int`` when ``integer``), ``>= minimum`` (``>`` if ``strict``).

    ``TypeError`` names ``name`` for a string, bool or other non-number; ``ValueError`` names it
    for NaN, an infinity, a non-integer where an integer is needed, or a value out of range.
    """
    kind = "an integer" if integer else "a real number"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")


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


def check_temperature(
    temperature: float | Tensor, rows_shape: torch.Size | None = None, name: str = "temperature"
) -> None:
    """A temperature in ``(0, MAX_TEMPERATURE]``: a number, a scalar tensor, or one per row."""
    bound = f"in (0, {MAX_TEMPERATURE:g}]"
    if isinstance(temperature, Tensor):
        if not temperature.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {temperature.dtype}")
        if rows_shape is not None and temperature.dim() > 0 and temperature.shape != rows_shape:
            raise ValueError(
                f"{name} must be a scalar or have the rows' shape {tuple(rows_shape)}, "
                f"got {tuple(temperature.shape)}"
            )
        values = temperature.detach()
        if not bool(((values > 0) & (values <= MAX_TEMPERATURE)).all()):
            bad = values[~((values > 0) & (values <= MAX_TEMPERATURE))].flatten()[0].item()
            raise ValueError(f"{name} must be {bound}, got {bad:g}")
        return
    check_number(name, temperature)
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise ValueError(f"{name} must be {bound}, got {temperature}")


def check_unit_interval(name: str, value: float, *, include_one: bool = True) -> None:
    """Raise unless ``value`` is a real number with ``0 <= value <= 1`` (``< 1`` without
    ``include_one``)."""
    check_number(name, value)
    if not (0.0 <= float(value) <= 1.0 if include_one else 0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be in [0, {'1]' if include_one else '1)'}, got {value}")


def check_labels(labels: Tensor, logits: Tensor, ignore_index: int | None = None) -> Tensor:
    """Labels are integer class indices of shape ``logits.shape[:-1]`` within ``[0, C)``.

    Entries equal to ``ignore_index`` are allowed anywhere. Any integer dtype is accepted
    (int16, int32, uint8, ...); the labels are returned as int64, the index type torch needs.
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
    return labels.long()


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

    Zero selected rows give a loss of exactly 0 whose gradient is zero, never NaN. Means
    divide each row before summing, so rows near the dtype's largest value do not overflow.
    """
    check_reduction(reduction)
    if reduction == "none":
        if mask is None:
            return row_values.reshape(rows_shape)
        out = row_values.new_zeros(mask.numel())
        return out.masked_scatter(mask.reshape(-1), row_values).reshape(rows_shape)
    if reduction == "sum":
        return row_values.sum()
    count = row_values.shape[0] * (elements_per_row if reduction == "mean" else 1)
    # Divide before summing: rows near the dtype's largest value average without overflow.
    return (row_values / max(count, 1)).sum()
