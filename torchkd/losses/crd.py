"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

:class:`CRDLoss` is the paper's memory-bank version: linear heads project student and teacher
features to a shared unit sphere; two banks (``num_samples x feat_dim`` buffers) hold a moving
average of every training sample's embedding; each anchor is contrasted against its positive and
``K`` negatives read from the *other* network's bank with the NCE objective. Reference setup
(CIFAR-100): ``feat_dim=128``, ``K=16384``, ``temperature=0.07``, ``momentum=0.5``.

:class:`CRDInBatchLoss` is the variant for data without sample indices: InfoNCE over the batch.

Negatives are drawn with replacement (independent draws from the noise distribution, as NCE
assumes and as RepDistiller's in-loss sampler does).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import check_floating, check_temperature, check_unit_interval
from torchkd.losses.registry import Shapes, register

__all__ = [
    "CRDInBatchLoss",
    "CRDLoss",
    "EmbeddingHead",
    "crd_inbatch_loss",
    "crd_nce_loss",
    "draw_contrast_index",
    "group_by_class",
]

SamplingMode = Literal["exact", "relax"]
_RANDOM_RANGE = 2**62  # uniform integers reduced modulo a pool size (bias < pool / 2**62)


def _check_index_tensor(name: str, index: Tensor, shape: tuple[int, ...], num_samples: int) -> None:
    if not isinstance(index, Tensor) or index.is_floating_point() or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {getattr(index, 'dtype', index)}")
    if tuple(index.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise ValueError(
            f"{name} must hold sample indices in [0, {num_samples}) (num_samples), got values in "
            f"[{int(index.min())}, {int(index.max())}]"
        )


def group_by_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Sample indices sorted by class, and where each class starts in that order.

    Args:
        labels: ``[N]`` non-negative integer class of every sample.

    Returns:
        ``samples_by_class`` ``[N]`` (stable sort by class) and ``class_offsets`` ``[C + 1]``:
        the samples of class ``c`` are ``samples_by_class[class_offsets[c]:class_offsets[c + 1]]``.

    Example:
        >>> group_by_class(torch.tensor([1, 0, 1, 2]))
        (tensor([1, 0, 2, 3]), tensor([0, 1, 3, 4]))
    """
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', labels)}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must have shape [num_samples], got {list(labels.shape)}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0 (class indices), got min {int(labels.min())}")
    labels = labels.long()
    counts = torch.bincount(labels)
    if int(counts.max()) == labels.numel():
        raise ValueError("labels hold a single class: there are no other-class negatives to draw")
    class_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return torch.sort(labels, stable=True).indices, class_offsets


def _uniform_below(
    bound: Tensor, shape: tuple[int, ...], generator: torch.Generator | None
) -> Tensor:
    """Integers uniform in ``[0, bound)`` (``bound`` broadcast against ``shape``)."""
    draws = torch.randint(_RANDOM_RANGE, shape, generator=generator, device=bound.device)
    return draws % bound


def draw_contrast_index(
    index: Tensor,
    num_negatives: int,
    *,
    labels: Tensor,
    samples_by_class: Tensor,
    class_offsets: Tensor,
    mode: SamplingMode = "exact",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Positive and negative sample indices for each anchor, as RepDistiller's CIFAR sampler.

    Column 0 is the positive: the anchor itself (``"exact"``) or a random sample of the anchor's
    class (``"relax"``). Columns ``1..K`` are negatives drawn uniformly, with replacement, from
    the samples of *other* classes.

    Args:
        index: ``[B]`` anchor sample indices.
        num_negatives: ``K``.
        labels: ``[N]`` class of every sample.
        samples_by_class: from :func:`group_by_class`.
        class_offsets: from :func:`group_by_class`.
        mode: ``"exact"`` or ``"relax"``.
        generator: random generator on ``index``'s device, or None for the global one.

    Returns:
        ``[B, K + 1]`` long tensor on ``index``'s device.

    Example:
        >>> labels = torch.tensor([0, 0, 1, 1, 1])
        >>> order, offsets = group_by_class(labels)
        >>> anchors = torch.tensor([0, 3])
        >>> drawn = draw_contrast_index(
        ...     anchors, 4, labels=labels, samples_by_class=order, class_offsets=offsets
        ... )
        >>> drawn[:, 0].tolist(), labels[drawn[0, 1:]].tolist(), labels[drawn[1, 1:]].tolist()
        ([0, 3], [1, 1, 1, 1], [0, 0, 0, 0])
    """
    if mode not in ("exact", "relax"):
        raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
    anchor_class = labels[index]
    class_start = class_offsets[anchor_class]
    class_size = class_offsets[anchor_class + 1] - class_start
    other_size = labels.shape[0] - class_size
    batch_size = index.shape[0]
    position = _uniform_below(other_size[:, None], (batch_size, num_negatives), generator)
    position = position + (position >= class_start[:, None]) * class_size[:, None]
    negatives = samples_by_class[position]
    if mode == "exact":
        positives = index.long()
    else:
        offset = _uniform_below(class_size, (batch_size,), generator)
        positives = samples_by_class[class_start + offset]
    return torch.cat([positives[:, None], negatives], dim=1)


def crd_nce_loss(
    anchor_embedding: Tensor,
    contrast_embeddings: Tensor,
    *,
    temperature: float,
    normalizer: float | Tensor,
    num_samples: int,
) -> Tensor:
    r"""The NCE objective of CRD (Tian et al., ICLR 2020, eq. 18) for one side.

    With :math:`P_{ik} = \exp(v_i^\top m_{ik} / \tau) / Z` the unnormalized-then-scaled
    probability of contrast ``k`` for anchor ``i`` (``k = 0`` the positive, ``1..K`` negatives)
    and the noise probability :math:`K / N`:

    .. math::
        \mathcal{L} = -\frac{1}{B} \sum_i \Big[ \log \frac{P_{i0}}{P_{i0} + K/N}
        + \sum_{k=1}^{K} \log \frac{K/N}{P_{ik} + K/N} \Big]

    Computed in log space (``logsigmoid``), which equals RepDistiller's ``ContrastLoss`` up to
    its ``eps = 1e-7`` in the denominators.

    Args:
        anchor_embedding: ``[B, F]`` anchors :math:`v_i` (unit vectors in CRD).
        contrast_embeddings: ``[B, K + 1, F]`` memory rows :math:`m_{ik}`, positive first.
        temperature: :math:`\tau`.
        normalizer: :math:`Z > 0`.
        num_samples: :math:`N`, the dataset size.

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
    if not isinstance(normalizer, Tensor) and not normalizer > 0:
        raise ValueError(f"normalizer must be > 0, got {normalizer}")
    num_negatives = contrast_embeddings.shape[1] - 1
    scores = (contrast_embeddings @ anchor_embedding[:, :, None]).squeeze(2) / temperature
    log_noise = math.log(num_negatives / num_samples)
    log_probability = scores - torch.log(torch.as_tensor(normalizer, dtype=scores.dtype))
    positive_term = F.logsigmoid(log_probability[:, 0] - log_noise).sum()
    negative_term = F.logsigmoid(log_noise - log_probability[:, 1:]).sum()
    return -(positive_term + negative_term) / batch_size


class EmbeddingHead(nn.Module):
    """Flatten, linear projection to ``feat_dim``, L2-normalize (CRD's embedding head).

    Inputs are cast to the head's dtype (a half-precision teacher feeding a float32 head).
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
        projected = self.linear(flat.to(self.linear.weight.dtype))
        return F.normalize(projected, p=2, dim=1)


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _flat_dims(student: Shapes, teacher: Shapes) -> dict[str, Any]:
    """The embedding heads' input sizes from the probed shapes (``num_samples``, the dataset
    size, comes from the user)."""
    return {"student_dim": math.prod(student[0][1:]), "teacher_dim": math.prod(teacher[0][1:])}


@register(
    "crd",
    functional=None,
    signature="indexed",
    family="relation",
    compares_shapes=True,
    sizes=_flat_dims,
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
    average with decay ``ema_decay`` (``normalizer="ema"``). Banks start uniform in
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
            _check_positive_int(name, value)
        _check_positive_int("num_samples", num_samples, minimum=2)
        check_temperature(temperature)
        check_unit_interval("momentum", momentum)
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
        if normalizer not in ("first_batch", "ema"):
            raise ValueError(f"normalizer must be 'first_batch' or 'ema', got {normalizer!r}")
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
        # -1 = not estimated yet; a normalizer is a positive number once set.
        self.register_buffer("student_normalizer", torch.tensor(-1.0))
        self.register_buffer("teacher_normalizer", torch.tensor(-1.0))
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

    def _normalizer(self, name: str, scores_over_tau: Tensor) -> Tensor:
        """Current Z for one side; estimates / updates the stored one in training mode."""
        stored = getattr(self, name)
        log_mean = torch.logsumexp(scores_over_tau.detach().flatten(), 0) - math.log(
            scores_over_tau.numel()
        )
        batch_estimate = (log_mean + math.log(self.num_samples)).exp().to(stored.dtype)
        if bool(stored < 0):
            if self.training:
                stored.copy_(batch_estimate)
            return batch_estimate
        if self.training and self.normalizer == "ema":
            stored.mul_(self.ema_decay).add_((1.0 - self.ema_decay) * batch_estimate)
        return stored.clone()

    @torch.no_grad()
    def _update_bank(self, bank: Tensor, index: Tensor, embedding: Tensor) -> None:
        mixed = self.momentum * bank[index] + (1.0 - self.momentum) * embedding.to(bank.dtype)
        bank.index_copy_(0, index, F.normalize(mixed, p=2, dim=1))

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
        _check_index_tensor("index", index, (batch_size,), self.num_samples)
        index = index.long()
        if contrast_index is None:
            contrast_index = self._sample_contrast_index(index)
        else:
            expected = (batch_size, self.num_negatives + 1)
            _check_index_tensor("contrast_index", contrast_index, expected, self.num_samples)
            contrast_index = contrast_index.long()
        bank_dtype = self.student_bank.dtype
        student_unit = self.student_head(student_embedding).to(bank_dtype)
        teacher_unit = self.teacher_head(teacher_embedding).to(bank_dtype)
        teacher_rows = self.teacher_bank[contrast_index].detach()
        student_rows = self.student_bank[contrast_index].detach()
        student_scores = (teacher_rows @ student_unit[:, :, None]).squeeze(2) / self.temperature
        teacher_scores = (student_rows @ teacher_unit[:, :, None]).squeeze(2) / self.temperature
        student_z = self._normalizer("student_normalizer", student_scores)
        teacher_z = self._normalizer("teacher_normalizer", teacher_scores)
        loss = crd_nce_loss(
            student_unit,
            teacher_rows,
            temperature=self.temperature,
            normalizer=student_z,
            num_samples=self.num_samples,
        ) + crd_nce_loss(
            teacher_unit,
            student_rows,
            temperature=self.temperature,
            normalizer=teacher_z,
            num_samples=self.num_samples,
        )
        if self.training:
            self._update_bank(self.student_bank, index, student_unit.detach())
            self._update_bank(self.teacher_bank, index, teacher_unit.detach())
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, feat_dim={self.feat_dim}, "
            f"num_negatives={self.num_negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}, mode={self.mode!r}, normalizer={self.normalizer!r}"
        )


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
    compute_dtype = torch.promote_types(student_embedding.dtype, torch.float32)
    student_unit = F.normalize(student_embedding.to(compute_dtype), p=2, dim=1)
    teacher_unit = F.normalize(teacher_embedding.to(compute_dtype), p=2, dim=1)
    logits = student_unit @ teacher_unit.T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
    return loss.to(student_embedding.dtype)


@register(
    "crd_inbatch",
    functional=None,
    signature="embeddings",
    family="relation",
    compares_shapes=True,
    sizes=_flat_dims,
)
class CRDInBatchLoss(nn.Module):
    """:func:`crd_inbatch_loss` behind learned :class:`EmbeddingHead` s (student and teacher).

    Example:
        >>> loss = CRDInBatchLoss(6, 10, feat_dim=4)(torch.randn(5, 6), torch.randn(5, 10))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self, student_dim: int, teacher_dim: int, feat_dim: int = 128, temperature: float = 0.07
    ) -> None:
        super().__init__()
        for name, value in (
            ("student_dim", student_dim),
            ("teacher_dim", teacher_dim),
            ("feat_dim", feat_dim),
        ):
            _check_positive_int(name, value)
        check_temperature(temperature)
        self.temperature = temperature
        self.student_head = EmbeddingHead(student_dim, feat_dim)
        self.teacher_head = EmbeddingHead(teacher_dim, feat_dim)

    def forward(self, student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
        check_floating("student_embedding", student_embedding)
        check_floating("teacher_embedding", teacher_embedding)
        return crd_inbatch_loss(
            self.student_head(student_embedding),
            self.teacher_head(teacher_embedding),
            temperature=self.temperature,
        )

    def extra_repr(self) -> str:
        return f"feat_dim={self.student_head.linear.out_features}, temperature={self.temperature}"
