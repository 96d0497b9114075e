"""Probabilistic knowledge transfer (PKT): match the batch's cosine-similarity distributions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_reduction,
    largest_magnitude,
    reduce_rows,
    upcast,
)
from torchkd.losses.registry import register

__all__ = ["PKTLoss", "pkt_loss"]


def _conditional_similarities(embedding: Tensor, eps: float) -> Tensor:
    """Row-stochastic ``[B, B]`` matrix of cosine similarities rescaled to ``[0, 1]``.

    ``x / (|x| + eps)`` is computed as ``y / (|y| + eps / m)`` with ``y = x / m``, ``m`` the
    row's largest magnitude (no overflow near the float32 range); a zero row stays zero.
    """
    scale = largest_magnitude(embedding, 1)
    scaled = embedding / scale
    denominator = scaled.norm(dim=1, keepdim=True) + eps / scale
    unit = scaled / torch.where(denominator > 0, denominator, 1.0)
    similarity = (unit @ unit.T + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    *,
    eps: float = 1e-7,
    reduction: str = "mean",
) -> Tensor:
    r"""PKT: KL divergence between the conditional similarity distributions of a batch.

    With the cosine kernel :math:`K(x, y) = \frac{1}{2}(\cos(x, y) + 1)` over the samples of a
    batch (each embedding scaled by :math:`1/(\lVert x\rVert_2 + \epsilon)`),

    .. math::
        p_{j|i} = \frac{K(x_i, x_j)}{\sum_k K(x_i, x_k)}, \qquad
        \mathcal{L} = \frac{1}{B^2} \sum_{i,j} p^t_{j|i}
            \log\frac{p^t_{j|i} + \epsilon}{p^s_{j|i} + \epsilon}

    From Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
    Transfer", ECCV 2018, in the form of the authors' code and RepDistiller (the sums include
    :math:`j = i`; RepDistiller weights the term by 30000). The student and teacher embeddings
    may have different widths; inputs with more than two dimensions are flattened to
    ``[B, -1]``.

    Args:
        student_embedding: ``[B, D_s]`` student embeddings.
        teacher_embedding: ``[B, D_t]`` teacher embeddings of the same samples.
        eps: stabilizer of the norms and of the logarithm, ``>= 0`` (with 0, a zero embedding
            has similarity 1/2 to every sample, and entries with :math:`p^t_{j|i} = 0` add 0).
        reduction: ``"mean"`` (default, over the ``B x B`` entries as above), ``"batchmean"``
            (KL summed per row, mean over rows: ``B`` times ``"mean"``), ``"sum"``, or
            ``"none"`` (one KL per sample, shape ``[B]``).

    Example:
        >>> import torch
        >>> embedding = torch.randn(4, 8)
        >>> pkt_loss(embedding, embedding.clone()).item()
        0.0
    """
    check_floating("student_embedding", student_embedding)
    check_floating("teacher_embedding", teacher_embedding)
    check_reduction(reduction)
    check_number("eps", eps, minimum=0.0)
    if student_embedding.dim() < 2 or teacher_embedding.dim() < 2:
        raise ValueError(
            "student_embedding and teacher_embedding must be [B, D], got "
            f"{tuple(student_embedding.shape)} and {tuple(teacher_embedding.shape)}"
        )
    if student_embedding.shape[0] != teacher_embedding.shape[0]:
        raise ValueError(
            "student_embedding and teacher_embedding must have the same batch size, got "
            f"{tuple(student_embedding.shape)} and {tuple(teacher_embedding.shape)}"
        )
    student_flat = upcast(student_embedding, teacher_embedding).flatten(1)
    teacher_flat = upcast(teacher_embedding, student_embedding).flatten(1)
    student = _conditional_similarities(student_flat, eps)
    teacher = _conditional_similarities(teacher_flat, eps)
    present = teacher > 0
    ratio = torch.where(present, teacher + eps, 1.0) / torch.where(present, student + eps, 1.0)
    per_row = torch.where(present, teacher * ratio.log(), 0.0).sum(dim=1)
    batch_size = student.shape[0]
    return reduce_rows(per_row, reduction, rows_shape=per_row.shape, elements_per_row=batch_size)


@register(
    "pkt",
    functional=pkt_loss,
    signature="embeddings",
    family="feature",
    compares_shapes=True,
)
class PKTLoss(nn.Module):
    """Module form of :func:`pkt_loss`."""

    def __init__(self, eps: float = 1e-7, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        check_number("eps", eps, minimum=0.0)
        self.eps = eps
        self.reduction = reduction

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        return pkt_loss(
            student_embedding, teacher_embedding, eps=self.eps, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
