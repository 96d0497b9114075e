"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020), memory-bank
version.

:class:`CRDLoss`: linear heads project student and teacher features to a shared unit sphere; two
banks (``num_samples x feat_dim`` buffers) hold a moving average of every training sample's
embedding; each anchor is contrasted against its positive and ``K`` negatives read from the
*other* network's bank with the NCE objective. Reference setup (CIFAR-100): ``feat_dim=128``,
``K=16384``, ``temperature=0.07``, ``momentum=0.5``. Contrast indices come from
:mod:`torchkd.losses.crd_sampling`; the variant for data without sample indices is
:mod:`torchkd.losses.crd_inbatch`.

The NCE normalizers are kept in log space (``log Z = 1/tau + ...`` overflows float32 for
``tau <= 0.0125``), and the losses compute in float32 at least.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_temperature,
    check_unit_interval,
    largest_magnitude,
    unit_vectors,
    upcast,
)
from torchkd.losses.crd_sampling import (
    SamplingMode,
    check_index_tensor,
    draw_contrast_index,
    group_by_class,
)
from torchkd.losses.distributed import gather_rows
from torchkd.losses.registry import Shapes, register

__all__ = ["CRDLoss", "EmbeddingHead", "crd_nce_loss"]


def crd_nce_loss(
    anchor_embedding: Tensor,
    contrast_embeddings: Tensor,
    *,
    temperature: float,
    num_samples: int,
    normalizer: float | Tensor | None = None,
    log_normalizer: float | Tensor | None = None,
) -> Tensor:
    r"""The NCE objective of CRD (Tian et al., ICLR 2020, eq. 18) for one side.

    With :math:`P_{ik} = \exp(v_i^\top m_{ik} / \tau) / Z` the unnormalized-then-scaled
    probability of contrast ``k`` for anchor ``i`` (``k = 0`` the positive, ``1..K`` negatives)
    and the noise probability :math:`K / N`:

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_i \Big[ \log \frac{P_{i0}}{P_{i0} + K/N}
        + \sum_{k=1}^{K} \log \frac{K/N}{P_{ik} + K/N} \Big]

    Computed in log space (``logsigmoid``), which equals RepDistiller's ``ContrastLoss`` up to
    its ``eps = 1e-7`` in the denominators. Give :math:`Z` or, for small temperatures where
    :math:`Z \sim e^{1/\tau}` overflows, :math:`\log Z` (exactly one of the two).

    Args:
        anchor_embedding: ``[B, F]`` anchors :math:`v_i` (unit vectors in CRD).
        contrast_embeddings: ``[B, K + 1, F]`` memory rows :math:`m_{ik}`, positive first.
        temperature: :math:`\tau`.
        num_samples: :math:`N`, the dataset size.
        normalizer: :math:`Z > 0`.
        log_normalizer: :math:`\log Z` (finite).

    Example:
        >>> anchor = torch.tensor([[1.0, 0.0]])
        >>> rows = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> loss = crd_nce_loss(anchor, rows, temperature=1.0, normalizer=1.0, num_samples=1)
        >>> round(loss.item(), 4)  # -log(e / (e + 1)) - log(1 / 2)
        1.0064
    """
    check_floating("anchor_embedding", anchor_embedding)
    check_floating("contrast_embeddings", contrast_embeddings)
    batch_size, feat_dim = anchor_embedding.shape if anchor_embedding.dim() == 2 else (-1, -1)
    if (
        batch_size < 0
        or contrast_embeddings.dim() != 3
        or contrast_embeddings.shape[0] != batch_size
        or contrast_embeddings.shape[2] != feat_dim
        or contrast_embeddings.shape[1] < 2
    ):
        raise ValueError(
            "anchor_embedding must be [B, F] and contrast_embeddings [B, K + 1, F] with K >= 1, "
            f"got {list(anchor_embedding.shape)} and {list(contrast_embeddings.shape)}"
        )
    check_temperature(temperature)
    if (normalizer is None) == (log_normalizer is None):
        raise ValueError("give exactly one of normalizer and log_normalizer")
    if normalizer is not None:
        if isinstance(normalizer, Tensor):
            log_normalizer = normalizer.log()
        else:
            check_number("normalizer", normalizer, minimum=0.0, strict=True)
            log_normalizer = math.log(normalizer)
    elif not isinstance(log_normalizer, Tensor):
        check_number("log_normalizer", log_normalizer)
    anchor = upcast(anchor_embedding, contrast_embeddings)
    contrasts = upcast(contrast_embeddings, anchor_embedding)
    num_negatives = contrasts.shape[1] - 1
    scores = (contrasts @ anchor[:, :, None]).squeeze(2) / temperature
    log_noise = math.log(num_negatives / num_samples)
    log_probability = scores - torch.as_tensor(log_normalizer, dtype=scores.dtype)
    positive_term = F.logsigmoid(log_probability[:, 0] - log_noise).sum()
    negative_term = F.logsigmoid(log_noise - log_probability[:, 1:]).sum()
    return -(positive_term + negative_term) / batch_size


class EmbeddingHead(nn.Module):
    """Flatten, linear projection to ``feat_dim``, L2-normalize (CRD's embedding head).

    Inputs are cast to the head's dtype (a half-precision teacher feeding a float32 head).
    Each input row is divided by its largest magnitude when that exceeds 1 (the bias alike),
    which leaves the unit output unchanged and keeps features near the float32 range finite.
    """

    def __init__(self, in_dim: int, feat_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, feat_dim)

    def forward(self, feature: Tensor) -> Tensor:
        flat = feature.reshape(feature.shape[0], -1)
        if flat.shape[1] != self.linear.in_features:
            raise ValueError(
                f"feature flattens to {flat.shape[1]} values per sample but the head expects "
                f"{self.linear.in_features} (shape {list(feature.shape)})"
            )
        flat = flat.to(self.linear.weight.dtype)
        scale = largest_magnitude(flat, 1).clamp(min=1.0)
        projected = F.linear(flat / scale, self.linear.weight, self.linear.bias / scale)
        return unit_vectors(projected, dim=1)


def embedding_dims(student: Shapes, teacher: Shapes) -> dict[str, Any]:
    """The embedding heads' input sizes from the probed shapes (``num_samples``, the dataset
    size, comes from the user)."""
    return {"student_dim": math.prod(student[0][1:]), "teacher_dim": math.prod(teacher[0][1:])}


@register(
    "crd",
    functional=None,
    signature="indexed",
    family="relation",
    compares_shapes=True,
    sizes=embedding_dims,
)
class CRDLoss(nn.Module):
    r"""Contrastive representation distillation with memory banks (Tian et al., ICLR 2020).

    Student and teacher features go through :class:`EmbeddingHead` s to unit vectors
    :math:`s_i, t_i`. The student anchor :math:`s_i` is contrasted against rows of the *teacher*
    bank and the teacher anchor :math:`t_i` against the *student* bank; the loss is the sum of
    the two :func:`crd_nce_loss` terms. After each training forward the banks move towards the
    new embeddings:

    .. math::
        M[i] \leftarrow \frac{\mu M[i] + (1 - \mu) e_i}{\lVert \mu M[i] + (1 - \mu) e_i \rVert}

    The normalizer :math:`Z` of each side is, as in the paper, estimated on the first training
    batch as :math:`Z = N \cdot \mathrm{mean}_{ik} \exp(v_i^\top m_{ik} / \tau)` and then fixed
    (``normalizer="first_batch"``), or refreshed every training batch as an exponential moving
    average with decay ``ema_decay`` (``normalizer="ema"``). It is stored as :math:`\log Z`
    (buffers ``student_log_normalizer``, ``teacher_log_normalizer``; ``-inf`` until estimated),
    so small temperatures do not overflow; ``student_normalizer`` / ``teacher_normalizer``
    read :math:`Z` (-1 until estimated). Checkpoints holding the older :math:`Z` buffers load.
    Banks start uniform in
    :math:`[-\sigma, \sigma]`, :math:`\sigma = 1 / \sqrt{F / 3}` (rows of about unit norm).

    Contrast indices (``[B, K + 1]``, positive first) come from the batch (see
    ``torchkd.data.contrastive.ContrastiveSampleDataset``) or are drawn here: with
    ``labels_per_sample`` as in :func:`draw_contrast_index` (``mode`` picks the positive;
    negatives from other classes), without labels uniformly over all samples with the anchor as
    positive (RepDistiller's in-loss sampler; a negative may then occasionally be the anchor).

    In ``eval()`` mode the banks and normalizers are left untouched (validation indices belong
    to another dataset). If an index repeats within a batch, one of its updates wins. Banks and
    normalizers are persistent buffers (saved in ``state_dict``); the labels are not (they come
    from the data).

    Args:
        student_dim: flattened size of the student feature.
        teacher_dim: flattened size of the teacher feature.
        num_samples: :math:`N`, the size of the training set (indices ``0..N-1``).
        feat_dim: embedding size :math:`F` (128).
        num_negatives: :math:`K` (16384).
        temperature: :math:`\tau` (0.07).
        momentum: bank momentum :math:`\mu` (0.5).
        mode: ``"exact"`` (positive = the anchor) or ``"relax"`` (a same-class sample; needs
            labels).
        normalizer: ``"first_batch"`` or ``"ema"``.
        ema_decay: decay of the EMA normalizer, in ``[0, 1)``.
        labels_per_sample: ``[N]`` class of every training sample, or None.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> crd = CRDLoss(6, 10, num_samples=50, feat_dim=4, num_negatives=8)
        >>> loss = crd(torch.randn(5, 6), torch.randn(5, 10), torch.arange(5))
        >>> loss.shape, bool(crd.student_normalizer > 0)
        (torch.Size([]), True)
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_samples: int,
        *,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        mode: SamplingMode = "exact",
        normalizer: Literal["first_batch", "ema"] = "first_batch",
        ema_decay: float = 0.99,
        labels_per_sample: Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("student_dim", student_dim),
            ("teacher_dim", teacher_dim),
            ("feat_dim", feat_dim),
            ("num_negatives", num_negatives),
        ):
            check_number(name, value, minimum=1, integer=True)
        check_number("num_samples", num_samples, minimum=2, integer=True)
        check_temperature(temperature)
        check_unit_interval("momentum", momentum)
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
        if normalizer not in ("first_batch", "ema"):
            raise ValueError(f"normalizer must be 'first_batch' or 'ema', got {normalizer!r}")
        check_number("ema_decay", ema_decay)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.num_samples = num_samples
        self.feat_dim = feat_dim
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.mode = mode
        self.normalizer = normalizer
        self.ema_decay = ema_decay
        self.student_head = EmbeddingHead(student_dim, feat_dim)
        self.teacher_head = EmbeddingHead(teacher_dim, feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        for bank in ("student_bank", "teacher_bank"):
            self.register_buffer(bank, torch.rand(num_samples, feat_dim) * (2 * bound) - bound)
        # log Z of each side; -inf = not estimated yet.
        self.register_buffer("student_log_normalizer", torch.tensor(-math.inf))
        self.register_buffer("teacher_log_normalizer", torch.tensor(-math.inf))
        self.register_buffer("labels_per_sample", None, persistent=False)
        self.register_buffer("samples_by_class", None, persistent=False)
        self.register_buffer("class_offsets", None, persistent=False)
        if labels_per_sample is not None:
            self.set_labels(labels_per_sample)
        elif mode == "relax":
            raise ValueError("mode='relax' draws same-class positives: pass labels_per_sample")

    def set_labels(self, labels_per_sample: Tensor) -> None:
        """Set the class of every training sample (``[num_samples]``) for negative sampling."""
        if not isinstance(labels_per_sample, Tensor) or labels_per_sample.dim() != 1:
            raise ValueError(
                f"labels_per_sample must be a 1-D tensor of {self.num_samples} labels, got "
                f"{getattr(labels_per_sample, 'shape', type(labels_per_sample).__name__)}"
            )
        if labels_per_sample.shape[0] != self.num_samples:
            raise ValueError(
                f"labels_per_sample must have shape [{self.num_samples}] (num_samples), got "
                f"{list(labels_per_sample.shape)}"
            )
        device = self.student_bank.device
        samples_by_class, class_offsets = group_by_class(labels_per_sample.cpu())
        self.labels_per_sample = labels_per_sample.long().to(device)
        self.samples_by_class = samples_by_class.to(device)
        self.class_offsets = class_offsets.to(device)

    def _sample_contrast_index(self, index: Tensor) -> Tensor:
        if self.labels_per_sample is None:
            negatives = torch.randint(
                self.num_samples, (index.shape[0], self.num_negatives), device=index.device
            )
            return torch.cat([index[:, None], negatives], dim=1)
        return draw_contrast_index(
            index,
            self.num_negatives,
            labels=self.labels_per_sample,
            samples_by_class=self.samples_by_class,
            class_offsets=self.class_offsets,
            mode=self.mode,
        )

    @property
    def student_normalizer(self) -> Tensor:
        """:math:`Z` of the student side (-1 until estimated)."""
        return _from_log(self.student_log_normalizer)

    @property
    def teacher_normalizer(self) -> Tensor:
        """:math:`Z` of the teacher side (-1 until estimated)."""
        return _from_log(self.teacher_log_normalizer)

    def _load_from_state_dict(
        self, state_dict: dict[str, Tensor], prefix: str, *args: object, **kwargs: object
    ) -> None:
        """Accept checkpoints that stored :math:`Z` itself (``*_normalizer`` buffers)."""
        for side in ("student", "teacher"):
            old_key = f"{prefix}{side}_normalizer"
            if old_key in state_dict and f"{prefix}{side}_log_normalizer" not in state_dict:
                value = state_dict.pop(old_key)
                log_value = torch.where(value > 0, value.clamp(min=1e-300).log(), -math.inf)
                state_dict[f"{prefix}{side}_log_normalizer"] = log_value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _log_normalizer(self, name: str, scores_over_tau: Tensor) -> Tensor:
        """Current log Z for one side; estimates / updates the stored one in training mode."""
        stored = getattr(self, name)
        first = bool(torch.isneginf(stored))
        if not first and not (self.training and self.normalizer == "ema"):
            return stored.clone()
        flat = scores_over_tau.detach()
        flat = (gather_rows(flat) if self.training else flat).flatten()  # the global batch's
        log_mean = torch.logsumexp(flat, 0) - math.log(flat.numel())
        batch_estimate = (log_mean + math.log(self.num_samples)).to(stored.dtype)
        if first:
            if self.training:
                stored.copy_(batch_estimate)
            return batch_estimate
        if self.ema_decay > 0:
            batch_estimate = torch.logaddexp(
                stored + math.log(self.ema_decay), batch_estimate + math.log1p(-self.ema_decay)
            )
        stored.copy_(batch_estimate)
        return stored.clone()

    @torch.no_grad()
    def _update_bank(self, bank: Tensor, index: Tensor, embedding: Tensor) -> None:
        mixed = self.momentum * bank[index] + (1.0 - self.momentum) * embedding.to(bank.dtype)
        bank.index_copy_(0, index, unit_vectors(mixed, dim=1))

    def forward(
        self,
        student_embedding: Tensor,
        teacher_embedding: Tensor,
        index: Tensor,
        contrast_index: Tensor | None = None,
    ) -> Tensor:
        """CRD loss for a batch.

        Args:
            student_embedding: ``[B, ...]`` student features (flattening to ``student_dim``).
            teacher_embedding: ``[B, ...]`` teacher features (flattening to ``teacher_dim``).
            index: ``[B]`` dataset indices of the batch samples.
            contrast_index: ``[B, K + 1]`` contrast indices, positive first, or None to draw.
        """
        check_floating("student_embedding", student_embedding)
        check_floating("teacher_embedding", teacher_embedding)
        batch_size = student_embedding.shape[0] if student_embedding.dim() else 0
        if teacher_embedding.dim() == 0 or teacher_embedding.shape[0] != batch_size:
            raise ValueError(
                "student_embedding and teacher_embedding must share the batch size, got "
                f"{list(student_embedding.shape)} and {list(teacher_embedding.shape)}"
            )
        check_index_tensor("index", index, (batch_size,), self.num_samples)
        index = index.long()
        if contrast_index is None:
            contrast_index = self._sample_contrast_index(index)
        else:
            expected = (batch_size, self.num_negatives + 1)
            check_index_tensor("contrast_index", contrast_index, expected, self.num_samples)
            contrast_index = contrast_index.long()
        bank_dtype = self.student_bank.dtype
        student_unit = self.student_head(student_embedding).to(bank_dtype)
        teacher_unit = self.teacher_head(teacher_embedding).to(bank_dtype)
        teacher_rows = self.teacher_bank[contrast_index].detach()
        student_rows = self.student_bank[contrast_index].detach()
        student_scores = (teacher_rows @ student_unit[:, :, None]).squeeze(2) / self.temperature
        teacher_scores = (student_rows @ teacher_unit[:, :, None]).squeeze(2) / self.temperature
        student_log_z = self._log_normalizer("student_log_normalizer", student_scores)
        teacher_log_z = self._log_normalizer("teacher_log_normalizer", teacher_scores)
        loss = crd_nce_loss(
            student_unit,
            teacher_rows,
            temperature=self.temperature,
            log_normalizer=student_log_z,
            num_samples=self.num_samples,
        ) + crd_nce_loss(
            teacher_unit,
            student_rows,
            temperature=self.temperature,
            log_normalizer=teacher_log_z,
            num_samples=self.num_samples,
        )
        if self.training:  # every process applies every process's rows: identical banks
            index, student_unit, teacher_unit = (
                gather_rows(t.detach()) for t in (index, student_unit, teacher_unit)
            )
            self._update_bank(self.student_bank, index, student_unit)
            self._update_bank(self.teacher_bank, index, teacher_unit)
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, "
            f"num_negatives={self.num_negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}, mode={self.mode!r}, normalizer={self.normalizer!r}"
        )


def _from_log(log_normalizer: Tensor) -> Tensor:
    """``exp(log Z)``, or -1 where ``log Z`` is ``-inf`` (not estimated yet)."""
    return torch.where(torch.isneginf(log_normalizer), -1.0, log_normalizer.exp())
