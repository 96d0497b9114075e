"""Self-supervised distillation (SEED; Fang et al., "SEED: Self-supervised Distillation for
Visual Representation", ICLR 2021): label-free, the student matches the teacher's similarity
distribution over a queue of past teacher embeddings.

:func:`seed_loss` is the objective with the queue given; :class:`SEEDLoss` owns the student's
projection head and the queue (a FIFO of teacher embeddings, refreshed after each training
forward), so it runs on an unlabeled transfer set.
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
from torchkd.losses.distributed import gather_rows
from torchkd.losses.registry import register

__all__ = ["SEEDLoss", "seed_loss"]


def seed_loss(
    student_embedding: Tensor,
    teacher_embedding: Tensor,
    queue: Tensor,
    *,
    student_temperature: float = 0.2,
    teacher_temperature: float = 1e-4,
) -> Tensor:
    r"""SEED's objective (Fang et al., ICLR 2021): cross-entropy between the teacher's and
    the student's similarity distributions over the sample's own teacher embedding and a queue.

    Rows are L2-normalized here: :math:`s_i, t_i` the student's and teacher's unit embeddings,
    :math:`q_1..q_K` the queue's, and :math:`d_0 = t_i, d_k = q_k` the instances compared with
    (the sample's own teacher embedding first). With

    .. math::
        p^T_{ik} = \frac{e^{t_i^\top d_k / \tau_T}}{\sum_{j=0}^{K} e^{t_i^\top d_j / \tau_T}},
        \qquad
        p^S_{ik} = \frac{e^{s_i^\top d_k / \tau_S}}{\sum_{j=0}^{K} e^{s_i^\top d_j / \tau_S}},

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_{i=1}^{B} \sum_{k=0}^{K} p^T_{ik} \log p^S_{ik}

    The defaults are the authors' code's (``--temp 0.2`` for the student, ``--distill-t 1e-4``
    for the teacher, where :math:`p^T` is nearly one-hot on :math:`d_0`). Computed in float32
    at least.

    Args:
        student_embedding: ``[B, D]`` (project the student to the teacher's ``D`` first, see
            :class:`SEEDLoss`).
        teacher_embedding: ``[B, D]``.
        queue: ``[K, D]`` past teacher embeddings, ``K >= 1``.
        student_temperature: :math:`\tau_S` (0.2).
        teacher_temperature: :math:`\tau_T` (1e-4).

    Example:
        >>> eye = torch.eye(3)
        >>> loss = seed_loss(eye, eye, -eye, student_temperature=0.01, teacher_temperature=0.01)
        >>> loss.item() < 1e-6
        True
    """
    check_floating("student_embedding", student_embedding)
    check_floating("teacher_embedding", teacher_embedding)
    check_floating("queue", queue)
    if student_embedding.dim() != 2 or student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            "student_embedding and teacher_embedding must both be [B, D] with the same shape, "
            f"got {list(student_embedding.shape)} and {list(teacher_embedding.shape)}"
        )
    if queue.dim() != 2 or queue.shape[1] != teacher_embedding.shape[1]:
        raise ValueError(
            f"queue must be [K, {teacher_embedding.shape[1]}] (the embeddings' D), "
            f"got {list(queue.shape)}"
        )
    check_temperature(student_temperature, name="student_temperature")
    check_temperature(teacher_temperature, name="teacher_temperature")
    student = unit_vectors(upcast(student_embedding, teacher_embedding, queue), dim=1)
    teacher = unit_vectors(upcast(teacher_embedding, student_embedding, queue), dim=1)
    queue_rows = unit_vectors(upcast(queue, student_embedding, teacher_embedding), dim=1)
    own = (teacher * teacher).sum(1, keepdim=True)  # t_i . t_i: 1 up to rounding
    teacher_logits = torch.cat([own, teacher @ queue_rows.T], dim=1) / teacher_temperature
    student_own = (student * teacher).sum(1, keepdim=True)
    student_logits = torch.cat([student_own, student @ queue_rows.T], dim=1) / student_temperature
    targets = F.softmax(teacher_logits, dim=1)
    return -(targets * F.log_softmax(student_logits, dim=1)).sum(1).mean()


@register(
    "seed",
    functional=None,
    signature="embeddings",
    family="relation",
    compares_shapes=True,
    sizes=embedding_dims,
)
class SEEDLoss(nn.Module):
    r""":func:`seed_loss` behind a learned student projection head, with a queue of teacher
    embeddings (Fang et al., ICLR 2021).

    The student feature goes through an :class:`~torchkd.losses.crd.EmbeddingHead` (flatten,
    linear to the teacher's flattened size ``teacher_dim``, L2-normalize); the teacher feature
    is flattened and L2-normalized, with no parameters, and is a fixed target: no gradient flows
    to it (the paper's teacher is frozen; a zero teacher row would otherwise get the
    normalization's ``1 / eps`` gradient). The queue (buffer ``queue``,
    ``queue_size x teacher_dim``) starts as random unit vectors drawn from a generator seeded
    with ``seed``. After each training forward, once the loss is computed, the batch's teacher
    embeddings are enqueued first-in first-out under ``no_grad``: row :math:`b` of a batch of
    :math:`B` goes to slot :math:`(p + b) \bmod K` and the pointer moves to
    :math:`p \leftarrow (p + B) \bmod K` (buffer ``queue_pointer``); a batch longer than the
    queue leaves only its last ``queue_size`` rows. In ``eval()`` mode the queue is untouched.
    Both buffers are persistent (saved in ``state_dict``), so a resumed run continues exactly.

    Under ``torchrun`` the loss is per sample (each process's share is exact) and every
    process enqueues the teacher rows of every process in rank order, so the queues stay
    identical; leave the term's ``global_batch`` off (on N processes, each gathered row would
    enter the queue N times).

    Args:
        student_dim: flattened size of the student feature.
        teacher_dim: flattened size of the teacher feature (the embedding size :math:`D`).
        queue_size: :math:`K` (65536 in the paper).
        student_temperature: :math:`\tau_S` (0.2).
        teacher_temperature: :math:`\tau_T` (1e-4).
        seed: seed of the queue's random start.

    Example:
        >>> seed = SEEDLoss(6, 4, queue_size=8)
        >>> loss = seed(torch.randn(5, 6), torch.randn(5, 4))
        >>> loss.shape, int(seed.queue_pointer)
        (torch.Size([]), 5)
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        *,
        queue_size: int = 65536,
        student_temperature: float = 0.2,
        teacher_temperature: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("student_dim", student_dim),
            ("teacher_dim", teacher_dim),
            ("queue_size", queue_size),
        ):
            check_number(name, value, minimum=1, integer=True)
        check_number("seed", seed, minimum=0, integer=True)
        check_temperature(student_temperature, name="student_temperature")
        check_temperature(teacher_temperature, name="teacher_temperature")
        self.teacher_dim = teacher_dim
        self.queue_size = queue_size
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.seed = seed
        self.student_head = EmbeddingHead(student_dim, teacher_dim)
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(queue_size, teacher_dim, generator=generator)
        self.register_buffer("queue", unit_vectors(start, dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, teacher_unit: Tensor) -> None:
        """Write ``teacher_unit`` (``[B, D]``) into the queue after the pointer, wrapping."""
        batch_size = teacher_unit.shape[0]
        kept = teacher_unit[-self.queue_size :].to(self.queue.dtype)
        start = self.queue_pointer + (batch_size - kept.shape[0])
        slots = (start + torch.arange(kept.shape[0], device=self.queue.device)) % self.queue_size
        self.queue.index_copy_(0, slots, kept)
        self.queue_pointer.copy_((self.queue_pointer + batch_size) % self.queue_size)

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        """SEED loss for a batch; in training mode the batch's teacher rows are then enqueued.

        Args:
            student_embedding: ``[B, ...]`` student features (flattening to ``student_dim``).
            teacher_embedding: ``[B, ...]`` teacher features (flattening to ``teacher_dim``).
        """
        check_floating("student_embedding", student_embedding)
        check_floating("teacher_embedding", teacher_embedding)
        batch_size = student_embedding.shape[0] if student_embedding.dim() else 0
        if teacher_embedding.dim() == 0 or teacher_embedding.shape[0] != batch_size:
            raise ValueError(
                "student_embedding and teacher_embedding must share the batch size, got "
                f"{list(student_embedding.shape)} and {list(teacher_embedding.shape)}"
            )
        teacher = teacher_embedding.detach().reshape(batch_size, -1)
        if teacher.shape[1] != self.teacher_dim:
            raise ValueError(
                f"teacher_embedding flattens to {teacher.shape[1]} values per sample but the "
                f"queue holds {self.teacher_dim} (shape {list(teacher_embedding.shape)})"
            )
        teacher = teacher.to(self.queue.dtype)
        loss = seed_loss(
            self.student_head(student_embedding),
            teacher,
            self.queue,
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
        )
        if self.training:
            self._enqueue(gather_rows(unit_vectors(teacher, dim=1)))
        return loss

    def extra_repr(self) -> str:
        return (
            f"teacher_dim={self.teacher_dim}, queue_size={self.queue_size}, "
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, seed={self.seed}"
        )
