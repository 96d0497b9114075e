"""In-batch contrastive distillation: CRD's objective without a memory bank (symmetric InfoNCE).

For data without sample indices; see :mod:`torchkd.losses.crd` for the memory-bank version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_temperature,
    unit_vectors,
    upcast,
)
from torchkd.losses.crd import EmbeddingHead, embedding_dims
from torchkd.losses.registry import register

__all__ = ["CRDInBatchLoss", "crd_inbatch_loss"]


def crd_inbatch_loss(
    student_embedding: Tensor, teacher_embedding: Tensor, *, temperature: float = 0.07
) -> Tensor:
    r"""In-batch contrastive distillation: symmetric InfoNCE between student and teacher.

    For data without sample indices (no memory bank): with unit vectors :math:`s_i, t_i` (rows
    are L2-normalized here) and :math:`\ell_{ij} = s_i^\top t_j / \tau`, the batch's other
    samples are the negatives:

    .. math::
        \mathcal{L} = \frac{1}{2B} \sum_i \Big[
        -\log \frac{e^{\ell_{ii}}}{\sum_j e^{\ell_{ij}}}
        -\log \frac{e^{\ell_{ii}}}{\sum_j e^{\ell_{ji}}} \Big]

    This is the contrastive objective of Tian et al. (ICLR 2020) with the NCE-over-memory
    replaced by a softmax over the batch, as in CLIP-style InfoNCE (van den Oord et al., 2018).

    Args:
        student_embedding: ``[B, F]``.
        teacher_embedding: ``[B, F]`` (same ``F``: project with heads first, see
            :class:`CRDInBatchLoss`).
        temperature: :math:`\tau` (0.07).

    Example:
        >>> import torch
        >>> eye = torch.eye(3)
        >>> crd_inbatch_loss(eye, eye, temperature=0.01).item() < 1e-6
        True
    """
    check_floating("student_embedding", student_embedding)
    check_floating("teacher_embedding", teacher_embedding)
    if student_embedding.dim() != 2 or student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            "student_embedding and teacher_embedding must both be [B, F] with the same shape, "
            f"got {list(student_embedding.shape)} and {list(teacher_embedding.shape)}"
        )
    check_temperature(temperature)
    student_unit = unit_vectors(upcast(student_embedding, teacher_embedding), dim=1)
    teacher_unit = unit_vectors(upcast(teacher_embedding, student_embedding), dim=1)
    logits = student_unit @ teacher_unit.T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@register(
    "crd_inbatch",
    functional=None,
    signature="embeddings",
    family="relation",
    compares_shapes=True,
    sizes=embedding_dims,
)
class CRDInBatchLoss(nn.Module):
    """:func:`crd_inbatch_loss` behind learned :class:`EmbeddingHead` s (student and teacher),
    or on the embeddings as they are with ``heads=False`` (the student then learns the
    teacher's own space; ``student_dim`` must equal ``teacher_dim``).

    Example:
        >>> loss = CRDInBatchLoss(6, 10, feat_dim=4)(torch.randn(5, 6), torch.randn(5, 10))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        feat_dim: int = 128,
        temperature: float = 0.07,
        heads: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (
            ("student_dim", student_dim),
            ("teacher_dim", teacher_dim),
            ("feat_dim", feat_dim),
        ):
            check_number(name, value, minimum=1, integer=True)
        check_temperature(temperature)
        if not heads and student_dim != teacher_dim:
            raise ValueError(
                f"heads=False needs student_dim == teacher_dim, got {student_dim} and {teacher_dim}"
            )
        self.temperature = temperature
        self.student_head = EmbeddingHead(student_dim, feat_dim) if heads else nn.Identity()
        self.teacher_head = EmbeddingHead(teacher_dim, feat_dim) if heads else nn.Identity()

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        check_floating("student_embedding", student_embedding)
        check_floating("teacher_embedding", teacher_embedding)
        return crd_inbatch_loss(
            self.student_head(student_embedding),
            self.teacher_head(teacher_embedding),
            temperature=self.temperature,
        )

    def extra_repr(self) -> str:
        if isinstance(self.student_head, nn.Identity):
            return f"heads=False, temperature={self.temperature}"
        return f"feat_dim={self.student_head.linear.out_features}, temperature={self.temperature}"
