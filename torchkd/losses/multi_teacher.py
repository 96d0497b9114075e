"""Multi-teacher distillation: a per-sample weighted sum of KD losses, one per teacher."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from torchkd.losses._common import (
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
    compute_dtype,
    reduce_rows,
    select_rows,
    upcast,
)
from torchkd.losses._module import HyperparameterModule
from torchkd.losses.kl import divergence_rows
from torchkd.losses.registry import register

__all__ = ["MultiTeacherKDLoss", "multi_teacher_kd_loss", "weights_from_accuracies"]

WEIGHTINGS: tuple[str, ...] = ("mean", "entropy", "confidence")


def _check_teachers(student_logits: Tensor, teacher_logits: Sequence[Tensor]) -> None:
    if isinstance(teacher_logits, Tensor) or not isinstance(teacher_logits, Sequence):
        raise TypeError(
            "teacher_logits must be a list or tuple of tensors, one per teacher, got "
            f"{type(teacher_logits).__name__} (for a stacked [M, ...] tensor pass "
            "list(stacked.unbind(0)))"
        )
    if len(teacher_logits) == 0:
        raise ValueError("teacher_logits is empty: give at least one teacher's logits")
    for index, teacher in enumerate(teacher_logits):
        check_pair(student_logits, teacher, teacher_name=f"teacher_logits[{index}]")


def _check_weight_tensor(weights: Tensor, num_teachers: int) -> None:
    if weights.dim() != 1 or weights.shape[0] != num_teachers:
        raise ValueError(
            f"weighting tensor must have shape ({num_teachers},), one weight per teacher, got "
            f"{tuple(weights.shape)}"
        )
    if not weights.is_floating_point():
        raise TypeError(f"weighting tensor must be floating point, got {weights.dtype}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"weighting tensor must be finite and >= 0, got {weights.tolist()}")
    if not float(weights.sum()) > 0:
        raise ValueError(f"weighting tensor must have a positive sum, got {weights.tolist()}")


def _teacher_weights(
    teacher_rows: list[Tensor], labels: Tensor | None, weighting: str | Tensor
) -> Tensor:
    """Per-row teacher weights ``[N, M]`` (rows sum to 1) from the selected teacher rows."""
    num_rows, num_teachers = teacher_rows[0].shape[0], len(teacher_rows)
    dtype = compute_dtype(*teacher_rows)
    if isinstance(weighting, Tensor):
        normalized = weighting.to(device=teacher_rows[0].device, dtype=dtype)
        normalized = normalized / normalized.sum()
        return normalized.expand(num_rows, num_teachers)
    if weighting == "mean":
        return teacher_rows[0].new_full((num_rows, num_teachers), 1.0 / num_teachers, dtype=dtype)
    log_probs = torch.stack(
        [upcast(rows, *teacher_rows).log_softmax(dim=-1) for rows in teacher_rows], dim=1
    )
    if weighting == "entropy":
        entropy = torch.special.entr(log_probs.exp()).sum(dim=-1)  # [N, M]; 0 log 0 = 0
        return (-entropy).softmax(dim=-1)
    # "confidence": labels were checked to be present by the caller.
    label_index = labels.reshape(num_rows, 1, 1).expand(num_rows, num_teachers, 1)
    cross_entropy = -log_probs.gather(-1, label_index).squeeze(-1)  # [N, M]
    if num_teachers == 1:
        return torch.ones_like(cross_entropy)
    return (1.0 - cross_entropy.softmax(dim=-1)) / (num_teachers - 1)


def multi_teacher_kd_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    labels: Tensor | None = None,
    *,
    weighting: str | Tensor = "mean",
    temperature: float = 4.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Distill from M teachers: per-sample weighted sum of the teachers' KD losses.

    .. math::

        \mathcal{L}_i = \sum_{m=1}^{M} w_{m,i}\; T^2\,
            \mathrm{KL}\big(\mathrm{softmax}(z^{T_m}_i / T) \,\big\|\,
            \mathrm{softmax}(z^S_i / T)\big), \qquad \sum_m w_{m,i} = 1

    Each KD term is a row of :func:`torchkd.losses.kd_loss` (the KL kernel of
    :mod:`torchkd.losses.kl`, which owns the :math:`T^2` factor). The
    weights :math:`w_{m,i}` come from ``weighting``:

    - ``"mean"``: :math:`w_{m,i} = 1/M` (AVER-MKD).
    - a tensor ``[M]`` of non-negative fixed weights, normalized to sum 1 (e.g. from
      :func:`weights_from_accuracies`).
    - ``"entropy"``: more weight to the more certain teacher on each sample,
      :math:`w_{:,i} = \mathrm{softmax}_m(-H(p^{T_m}_i))` with
      :math:`H(p) = -\sum_c p_c \log p_c` in nats of the teacher's prediction at
      temperature 1, :math:`p^{T_m}_i = \mathrm{softmax}(z^{T_m}_i)`.
    - ``"confidence"``: CA-MKD (Zhang et al., "Confidence-Aware Multi-Teacher Knowledge
      Distillation", ICASSP 2022, eq. 2): teachers with a lower cross-entropy on the true label
      get more weight, :math:`w_{m,i} = \frac{1}{M-1}\big(1 - \mathrm{softmax}_m(
      \mathrm{CE}(z^{T_m}_i, y_i))\big)` (1 when M = 1). Needs ``labels``. The authors'
      code further divides the loss by M; this function does not, so that one teacher gives
      exactly :func:`kd_loss`.

    The weights are computed without gradient: they steer the loss, they are not trained.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: a list or tuple of M tensors ``[..., C]``, one per teacher.
        labels: optional ``[...]`` class indices; required by ``"confidence"``. When given,
            rows whose label equals ``ignore_index`` are left out.
        weighting: ``"mean"``, ``"entropy"``, ``"confidence"`` or a tensor ``[M]``.
        temperature: softmax temperature ``T > 0`` of the KD terms.
        ignore_index: label value marking rows to leave out.
        reduction: as :func:`torchkd.losses.kd_loss`: ``"batchmean"``, ``"sum"``, ``"mean"``
            (divided also by ``C``) or ``"none"``.
        mask: optional bool ``[...]``; ``False`` rows are left out.
        return_weights: also return the weights ``[..., M]`` (0 at left-out rows), for logging.

    Returns:
        The loss (scalar, or ``[...]`` for ``"none"``), or ``(loss, weights)``.

    Example:
        >>> import torch
        >>> student = torch.tensor([[1.0, 0.0, 0.0]])
        >>> teachers = [torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 3.0]])]
        >>> loss, weights = multi_teacher_kd_loss(
        ...     student, teachers, torch.tensor([0]), weighting="confidence",
        ...     temperature=1.0, return_weights=True)
        >>> [round(w, 3) for w in weights[0].tolist()]
        [0.953, 0.047]
    """
    _check_teachers(student_logits, teacher_logits)
    num_teachers = len(teacher_logits)
    rows_shape = student_logits.shape[:-1]
    check_mask(mask, rows_shape)
    check_temperature(temperature)
    check_reduction(reduction)
    if isinstance(weighting, Tensor):
        _check_weight_tensor(weighting, num_teachers)
    elif weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a tensor, got {weighting!r}")
    if labels is not None:
        labels = check_labels(labels, student_logits, ignore_index)
    elif isinstance(weighting, str) and weighting == "confidence":
        raise ValueError('weighting="confidence" (CA-MKD) needs labels; pass labels=...')

    keep = mask
    if labels is not None:
        keep = labels != ignore_index if mask is None else (labels != ignore_index) & mask
    student_rows = select_rows(student_logits, keep)
    teacher_rows = [select_rows(teacher, keep) for teacher in teacher_logits]
    kept_labels = None if labels is None else select_rows(labels.unsqueeze(-1), keep)
    with torch.no_grad():
        weights = _teacher_weights(teacher_rows, kept_labels, weighting)
    per_teacher = torch.stack(
        [divergence_rows("forward_kl", student_rows, rows, temperature) for rows in teacher_rows],
        dim=-1,
    )  # [N, M]: the rows of kd_loss, reduction="none"
    row_values = (weights.to(per_teacher.dtype) * per_teacher).sum(dim=-1)
    loss = reduce_rows(
        row_values,
        reduction,
        rows_shape=rows_shape,
        mask=keep,
        elements_per_row=student_logits.shape[-1],
    )
    if not return_weights:
        return loss
    if keep is None:
        return loss, weights.reshape(*rows_shape, num_teachers)
    all_weights = weights.new_zeros(keep.numel(), num_teachers)
    all_weights[keep.reshape(-1)] = weights
    return loss, all_weights.reshape(*rows_shape, num_teachers)


def weights_from_accuracies(
    accuracies: Sequence[float] | Tensor, *, temperature: float | None = None
) -> Tensor:
    r"""Fixed teacher weights from the teachers' validation accuracies (fractions in [0, 1]).

    With ``temperature=None`` the weights are proportional to the accuracies,
    :math:`w_m = a_m / \sum_k a_k`; with a temperature :math:`\tau > 0` they are
    :math:`w = \mathrm{softmax}(a / \tau)`, which separates close accuracies more as
    :math:`\tau \to 0` (one-hot on the best teacher) and tends to uniform as
    :math:`\tau \to \infty`. Pass the result as ``weighting=`` to
    :func:`multi_teacher_kd_loss`.

    Args:
        accuracies: one accuracy per teacher, each in ``[0, 1]`` (not percent).
        temperature: ``None`` for proportional weights, else the softmax temperature ``> 0``.

    Returns:
        A 1-D tensor of ``M`` weights (default dtype) summing to 1.

    Example:
        >>> [round(w, 3) for w in weights_from_accuracies([0.9, 0.6]).tolist()]
        [0.6, 0.4]
        >>> [round(w, 3) for w in weights_from_accuracies([0.9, 0.6], temperature=0.1).tolist()]
        [0.953, 0.047]
    """
    values = torch.as_tensor(accuracies, dtype=torch.get_default_dtype())
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(
            f"accuracies must be a non-empty 1-D sequence, got shape {tuple(values.shape)}"
        )
    if not bool(((values >= 0) & (values <= 1)).all()):
        raise ValueError(f"accuracies must be fractions in [0, 1], got {values.tolist()}")
    if temperature is not None:
        check_temperature(temperature)
        return (values / temperature).softmax(dim=0)
    if not float(values.sum()) > 0:
        raise ValueError(
            f"accuracies sum to 0; use temperature= for softmax weights, got {values.tolist()}"
        )
    return values / values.sum()


@register(
    "multi_teacher_kd",
    functional=multi_teacher_kd_loss,
    signature="multi_teacher",
    family="logit",
)
class MultiTeacherKDLoss(HyperparameterModule):
    """Module form of :func:`multi_teacher_kd_loss`; stores the hyperparameters.

    A tensor ``weighting`` is kept as a buffer, so it follows the module across devices.

    Example:
        >>> import torch
        >>> loss = MultiTeacherKDLoss(weighting=torch.tensor([2.0, 1.0]), temperature=2.0)
        >>> loss.weights.tolist(), loss.temperature, loss.reduction
        ([2.0, 1.0], 2.0, 'batchmean')
    """

    def __init__(
        self,
        weighting: str | Tensor = "mean",
        temperature: float = 4.0,
        ignore_index: int = -100,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        check_temperature(temperature)
        check_reduction(reduction)
        if isinstance(weighting, Tensor):
            _check_weight_tensor(weighting, weighting.numel())
            self.register_buffer("weights", weighting.detach().clone())
            self.weighting: str | None = None
        elif weighting in WEIGHTINGS:
            self.register_buffer("weights", None)
            self.weighting = weighting
        else:
            raise ValueError(
                f"weighting must be one of {WEIGHTINGS} or a tensor, got {weighting!r}"
            )
        self.store(temperature=temperature, ignore_index=ignore_index, reduction=reduction)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Sequence[Tensor],
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        return_weights: bool = False,
        temperature: float | Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return multi_teacher_kd_loss(
            student_logits,
            teacher_logits,
            labels,
            weighting=self.weights if self.weights is not None else self.weighting,
            mask=mask,
            return_weights=return_weights,
            **self.hyperparameters(temperature=temperature),
        )

    def extra_repr(self) -> str:
        weighting = self.weighting if self.weights is None else self.weights.tolist()
        return (
            f"weighting={weighting!r}, temperature={self.temperature}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
        )
