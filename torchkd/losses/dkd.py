"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from torchkd.losses._common import (
    check_labels,
    check_mask,
    check_number,
    check_pair,
    check_reduction,
    check_temperature,
    compute_dtype,
    reduce_rows,
    select_rows,
    unresolved_divergences,
    with_float64_rows,
)
from torchkd.losses._module import HyperparameterModule
from torchkd.losses.registry import register

__all__ = ["DKDLoss", "dkd_loss"]


def _check_weight(name: str, value: float) -> None:
    check_number(name, value, minimum=0.0)


def _log_binary_and_rest(scaled_logits: Tensor, is_target: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``[N, C]`` scaled logits into DKD's two distributions, in log space.

    Returns ``log_binary`` ``[N, 2]`` = (log p_target, log(1 - p_target)), computed from
    log-sum-exps so neither entry underflows to ``-inf``, and ``log_rest`` ``[N, C]``, the
    log-softmax over the non-target classes with ``-inf`` in the target column (the target is
    removed exactly, without gathering a ``[N, C - 1]`` copy). A row whose non-target classes
    are all ``-inf`` (masked) has no non-target mass: ``log(1 - p_target) = -inf`` and
    ``log_rest`` is ``-inf`` throughout (an empty distribution), with finite gradients.
    """
    log_normalizer = scaled_logits.logsumexp(dim=-1)
    target_logit = torch.where(is_target, scaled_logits, 0.0).sum(dim=-1)
    rest_logits = scaled_logits.masked_fill(is_target, float("-inf"))
    empty = (rest_logits == float("-inf")).all(dim=-1, keepdim=True)
    # logsumexp of an all -inf row has a NaN derivative: such rows take 0s, then -inf again.
    rest_normalizer = torch.where(empty, 0.0, rest_logits).logsumexp(dim=-1, keepdim=True)
    log_rest_mass = torch.where(empty, float("-inf"), rest_normalizer).squeeze(-1)
    log_binary = torch.stack(
        (target_logit - log_normalizer, log_rest_mass - log_normalizer), dim=-1
    )
    return log_binary, torch.where(empty, float("-inf"), rest_logits - rest_normalizer)


def _kl_from_log_probs(
    teacher_log_probs: Tensor, student_log_probs: Tensor, excluded: Tensor | None = None
) -> Tensor:
    """Row-wise KL(teacher || student) from log-probabilities; ``excluded`` entries add 0, and
    so do classes of zero teacher probability (``-inf`` masking), without NaN gradients."""
    absent = teacher_log_probs == float("-inf")
    if excluded is not None:
        absent = absent | excluded
    teacher_safe = torch.where(absent, 0.0, teacher_log_probs)
    log_ratio = teacher_safe - torch.where(absent, 0.0, student_log_probs)
    return torch.where(absent, 0.0, teacher_safe.exp() * log_ratio).sum(dim=-1)


def _dkd_rows(
    student_rows: Tensor,
    teacher_rows: Tensor,
    labels: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """``alpha TCKD + beta NCKD`` of each ``[N, C]`` row, without the ``T^2`` factor."""
    student_rows, teacher_rows = student_rows / temperature, teacher_rows / temperature
    is_target = torch.zeros_like(student_rows, dtype=torch.bool)
    is_target.scatter_(-1, labels.unsqueeze(-1), True)
    student_binary, student_rest = _log_binary_and_rest(student_rows, is_target)
    teacher_binary, teacher_rest = _log_binary_and_rest(teacher_rows, is_target)
    tckd = _kl_from_log_probs(teacher_binary, student_binary)
    nckd = _kl_from_log_probs(teacher_rest, student_rest, excluded=is_target)
    return (alpha * tckd + beta * nckd).clamp(min=0.0)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    r"""Decoupled knowledge distillation: weighted target-class and non-target-class KD.

    DKD (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022) splits the classical KD
    loss into a target-class term (TCKD) on the binary distribution
    :math:`b = (p_y, 1 - p_y)` and a non-target-class term (NCKD) on the distribution
    :math:`\hat p` over the other classes, and weights them independently. Per row, with
    :math:`p = \mathrm{softmax}(z / T)` and label :math:`y`:

    .. math::

        \mathcal{L}_{\mathrm{DKD}} = T^2 \left( \alpha\,\mathrm{KL}(b^T \,\|\, b^S)
            + \beta\,\mathrm{KL}(\hat p^T \,\|\, \hat p^S) \right),
        \qquad \hat p_j = \frac{e^{z_j / T}}{\sum_{k \ne y} e^{z_k / T}}\ (j \ne y).

    The reference implementation (mdistiller) removes the target class for NCKD by subtracting
    1000 from its scaled logit, which only approximates removal (it fails once logits / T
    exceed ~1000) and takes ``log`` of summed probabilities, which gives ``-inf`` when they
    underflow. Here the target column is removed exactly and :math:`\log b` is computed in log
    space, so values match the reference on ordinary inputs and stay finite on extreme ones.
    Where the teacher puts no mass outside the target (every other class ``-inf``, e.g. a
    vocabulary mask), :math:`\hat p^T` is undefined and NCKD is taken as 0: its weight in the
    KD decomposition :math:`\mathrm{KD} = \mathrm{TCKD} + (1 - p^T_y)\,\mathrm{NCKD}`, is 0.
    The reference's reduction (sum / batch size) is ``reduction="batchmean"``.

    mdistiller also ramps the DKD weight linearly over the first 20 epochs
    (``min(epoch / 20, 1)``); that is a schedule, not part of the loss: weight the term with
    ``torchkd.schedules.Warmup(inner=1.0, warmup_steps=20 * steps_per_epoch)``.

    Computation is in float32 at least (half-precision inputs are upcast), so the result is
    float32 for float16/bfloat16 inputs; rows float32 cannot resolve (large temperatures,
    logits near the float32 range) are recomputed in float64. Classes masked with ``-inf`` in
    both student and teacher contribute nothing.

    Args:
        student_logits: ``[..., C]`` student logits, ``C >= 2``.
        teacher_logits: ``[..., C]`` teacher logits.
        labels: ``[...]`` integer class indices; rows equal to ``ignore_index`` are left out.
        alpha: weight of TCKD, ``>= 0``.
        beta: weight of NCKD, ``>= 0`` (8.0 in the paper's CIFAR-100 setting).
        temperature: softmax temperature ``T > 0``.
        ignore_index: label value marking rows to leave out (e.g. padding tokens).
        reduction: ``"batchmean"`` (mean over kept rows), ``"sum"``, ``"mean"`` (divided also
            by ``C``) or ``"none"`` (``[...]``, 0 at left-out rows).
        mask: optional bool ``[...]``; ``False`` rows are left out.

    Returns:
        The loss: a scalar, or ``[...]`` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> teacher = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0]])
        >>> labels = torch.tensor([0, 1])
        >>> round(dkd_loss(student, teacher, labels, temperature=1.0).item(), 4)
        0.5861
        >>> float(dkd_loss(teacher, teacher, labels))
        0.0
    """
    check_pair(student_logits, teacher_logits)
    labels = check_labels(labels, student_logits, ignore_index)
    rows_shape = student_logits.shape[:-1]
    check_mask(mask, rows_shape)
    check_temperature(temperature)
    check_reduction(reduction)
    _check_weight("alpha", alpha)
    _check_weight("beta", beta)
    num_classes = student_logits.shape[-1]
    if num_classes < 2:
        raise ValueError(
            f"DKD needs at least 2 classes, got logits of shape {tuple(student_logits.shape)}"
        )

    keep = labels != ignore_index
    if mask is not None:
        keep = keep & mask
    dtype = compute_dtype(student_logits, teacher_logits)
    student_rows = select_rows(student_logits, keep).to(dtype)
    teacher_rows = select_rows(teacher_logits, keep).to(dtype)
    kept_labels = labels.reshape(-1)[keep.reshape(-1)]

    def row_fn(student: Tensor, teacher: Tensor, row_labels: Tensor) -> Tensor:
        return _dkd_rows(student, teacher, row_labels, alpha, beta, temperature)

    # A row is a difference of log-normalizers: at large T (z / T ~ 1e-4) or for logits near the
    # float32 range its float32 value loses its digits or overflows; redo such rows in float64.
    rows = with_float64_rows(
        row_fn,
        (student_rows, teacher_rows, kept_labels),
        lambda rows: unresolved_divergences(rows, num_classes, temperature, alpha + beta),
    )
    row_values = rows * temperature**2
    return reduce_rows(
        row_values, reduction, rows_shape=rows_shape, mask=keep, elements_per_row=num_classes
    )


@register("dkd", functional=dkd_loss, signature="logits_labels", family="logit")
class DKDLoss(HyperparameterModule):
    """Module form of :func:`dkd_loss`; stores the hyperparameters.

    Example:
        >>> DKDLoss(alpha=1.0, beta=8.0, temperature=4.0)
        DKDLoss(alpha=1.0, beta=8.0, temperature=4.0, ignore_index=-100, reduction='batchmean')
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ignore_index: int = -100,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        _check_weight("alpha", alpha)
        _check_weight("beta", beta)
        check_temperature(temperature)
        check_reduction(reduction)
        self.store(
            alpha=alpha,
            beta=beta,
            temperature=temperature,
            ignore_index=ignore_index,
            reduction=reduction,
        )

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        options = self.hyperparameters(temperature=temperature)
        return dkd_loss(student_logits, teacher_logits, labels, mask=mask, **options)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
        )
