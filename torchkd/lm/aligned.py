"""Token rows of a student and a teacher with different tokenizers, paired by an alignment.

A batch of text carrying both tokenizations (``data.kwargs.teacher_tokenizer``, see
:mod:`torchkd.data.aligned_text`) holds the teacher's own inputs under :data:`TEACHER_INPUTS`
and, under :data:`TEACHER_POSITIONS`, a ``[B, L]`` integer tensor: for each student position
``t``, the teacher position whose next-token distribution is compared with the student's at
``t``, or ``-1`` where nothing is compared. :func:`aligned_rows` gathers the compared pairs;
with the identity alignment (``positions[b, t] = t``, one tokenizer) it returns every row in
the order of ``tensor.reshape(-1, ...)``, so a per-row loss gives the plain path's value.
A teacher cache of such a teacher is stored in the student's layout (the teacher's entry of
position ``positions[b, t]`` at ``[b, t]``): :func:`compared_rows` gathers its rows.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["TEACHER_INPUTS", "TEACHER_POSITIONS", "aligned_rows", "compared_rows"]

TEACHER_INPUTS = "teacher_inputs"
TEACHER_POSITIONS = "teacher_positions"


def aligned_rows(
    student: Tensor, teacher: Tensor, labels: Tensor | None, positions: Tensor
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The aligned pairs as rows: ``student[b, t]``, ``teacher[b, positions[b, t]]`` and
    ``labels[b, t]`` for every ``(b, t)`` with ``positions[b, t] >= 0``, in row-major order.

    Args:
        student: ``[B, L, ...]`` (logits or hidden states at the student's positions).
        teacher: ``[B, L_T, ...]`` at the teacher's positions.
        labels: ``[B, L]`` student labels, or None.
        positions: ``[B, L]`` integer teacher positions, ``-1`` where nothing is compared.

    Returns:
        ``([n, ...], [n, ...], [n] or None)``.
    """
    if positions.dim() != 2 or positions.is_floating_point():
        raise ValueError(
            f"batch[{TEACHER_POSITIONS!r}] must be an integer [B, L] tensor, got "
            f"{positions.dtype} of shape {tuple(positions.shape)}"
        )
    if student.shape[:2] != positions.shape or teacher.shape[0] != positions.shape[0]:
        raise ValueError(
            f"batch[{TEACHER_POSITIONS!r}] {tuple(positions.shape)} must be [B, L] of the "
            f"student's rows {tuple(student.shape[:2])}, with the teacher's batch "
            f"{teacher.shape[0]}"
        )
    if labels is not None and labels.shape != positions.shape:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the shape of batch[{TEACHER_POSITIONS!r}] "
            f"{tuple(positions.shape)}"
        )
    if positions.numel() and int(positions.max()) >= teacher.shape[1]:
        raise ValueError(
            f"batch[{TEACHER_POSITIONS!r}] points past the teacher's {teacher.shape[1]} "
            f"positions (max {int(positions.max())}): the alignment is not this batch's"
        )
    rows, columns = (positions >= 0).nonzero(as_tuple=True)
    teacher_rows = teacher[rows, positions[rows, columns]]
    return student[rows, columns], teacher_rows, None if labels is None else labels[rows, columns]


def compared_rows(positions: Tensor, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """The rows ``tensor[b, t]`` of each ``[B, L, ...]`` tensor (None stays None) for every
    ``(b, t)`` with ``positions[b, t] >= 0``, in row-major order: :func:`aligned_rows` of
    tensors in the student's layout (a cached teacher's, or the student's own).

    Example:
        >>> import torch
        >>> compared_rows(torch.tensor([[0, -1, 2]]), torch.tensor([[5, 6, 7]]))
        (tensor([5, 7]),)
    """
    if positions.dim() != 2 or positions.is_floating_point():
        raise ValueError(
            f"batch[{TEACHER_POSITIONS!r}] must be an integer [B, L] tensor, got "
            f"{positions.dtype} of shape {tuple(positions.shape)}"
        )
    for tensor in tensors:
        if tensor is not None and tensor.shape[:2] != positions.shape:
            raise ValueError(
                f"batch[{TEACHER_POSITIONS!r}] {tuple(positions.shape)} must be [B, L] of the "
                f"rows it selects, got {tuple(tensor.shape)}"
            )
    keep = positions >= 0
    return tuple(None if tensor is None else tensor[keep] for tensor in tensors)
