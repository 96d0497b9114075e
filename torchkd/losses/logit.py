"""Output-level (logit) distillation losses of the KD family: KD (with optional logit
standardization), Hinton's blend with hard labels and soft cross-entropy. Reverse KL, JSD, TVD
and logit MSE are in :mod:`torchkd.losses.divergences`.

Logits are ``[..., C]`` with the class dimension last. Every loss computes one value per row,
then :func:`torchkd.losses._common.reduce_rows` applies ``reduction`` ("batchmean" by default:
sum over classes, mean over the selected rows) and ``mask`` (bool ``[...]``) selects the rows.
The KL family runs through :mod:`torchkd.losses.kl`: closed-form gradients, finite results for
``-inf`` (vocabulary-masked) and huge logits, float64 recomputation of rows float32 cannot
resolve (large temperatures). Every loss here computes in float32 at least and returns float32
for half-precision inputs; classes masked with ``-inf`` in both student and teacher contribute
nothing (the loss equals the loss without those classes).

``temperature`` is a float in ``(0, 1e6]``, a 0-dim tensor, or one value per row (``[...]``); a
tensor that requires grad (a learned temperature, as in CTKD: Li et al., "Curriculum Temperature
for Knowledge Distillation", AAAI 2023) receives its gradient through plain autograd.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from torchkd.losses._common import (
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_unit_interval,
    compute_dtype,
    reduce_rows,
)
from torchkd.losses._logit_common import (
    LogitLoss,
    divergence_loss,
    selected_pair,
    standardize_logits,
)
from torchkd.losses.kl import divergence_rows
from torchkd.losses.registry import register

__all__ = [
    "HintonLoss",
    "KDLoss",
    "LSKDLoss",
    "SoftCELoss",
    "hinton_loss",
    "kd_loss",
    "ls_kd_loss",
    "soft_ce_loss",
    "standardize_logits",
]


# --------------------------------------------------------------------------- KD


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    standardize: bool = False,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Knowledge distillation loss (Hinton, Vinyals & Dean, "Distilling the Knowledge in a
    Neural Network", 2015): the forward KL between the softened teacher and student.

    .. math::
        \\ell = T^2 \\, \\mathrm{KL}(p_T \\,\\|\\, p_S) = T^2 \\sum_c p_{T,c}
        \\left(\\log p_{T,c} - \\log p_{S,c}\\right), \\quad p = \\mathrm{softmax}(z / T)

    The :math:`T^2` factor keeps the gradient's size independent of :math:`T` (the gradient
    w.r.t. the student logits is :math:`T (p_S - p_T)`). Classes with :math:`p_T = 0` contribute
    0. With ``standardize=True`` each row of both logits is first z-scored
    (:func:`standardize_logits`, Sun et al., CVPR 2024).

    Args:
        student_logits: ``[..., C]`` student logits (floating point).
        teacher_logits: ``[..., C]`` teacher logits, same shape.
        temperature: :math:`T > 0`: a float, a 0-dim tensor, or one value per row (``[...]``).
        standardize: z-score the logits of each row before softening.
        reduction: ``"batchmean"`` (default), ``"sum"``, ``"mean"`` (per class) or ``"none"``.
        mask: bool ``[...]``: rows to include (others contribute nothing, not even NaN).

    Returns:
        The loss (float32 for half-precision inputs); shape ``[...]`` for ``"none"``.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(kd_loss(student, teacher, temperature=2.0).item(), 4)
        0.4337
    """
    return divergence_loss(
        "forward_kl",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        standardize=standardize,
    )


def ls_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 2.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """KD with logit standardization (Sun et al., "Logit Standardization in Knowledge
    Distillation", CVPR 2024): :func:`kd_loss` on z-scored logits.

    .. math::
        \\ell = T^2 \\, \\mathrm{KL}\\big(\\mathrm{softmax}(\\tilde z_T / T) \\,\\|\\,
        \\mathrm{softmax}(\\tilde z_S / T)\\big), \\quad
        \\tilde z = \\frac{z - \\bar z}{\\sigma(z) + 10^{-7}}

    The student need not match the teacher's logit range, only its relations. As in the
    reference code: sample standard deviation, :math:`\\epsilon = 10^{-7}` added to it, and the
    :math:`T^2` factor kept.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(ls_kd_loss(student, teacher).item(), 4)
        0.2252
    """
    return kd_loss(
        student_logits,
        teacher_logits,
        temperature=temperature,
        standardize=True,
        reduction=reduction,
        mask=mask,
    )


def hinton_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float | Tensor = 4.0,
    alpha: float = 0.9,
    standardize: bool = False,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Hinton's distillation objective: soft KD term blended with the hard-label cross-entropy
    (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015).

    .. math::
        \\ell = \\alpha \\, T^2 \\, \\mathrm{KL}(p_T \\,\\|\\, p_S)
        + (1 - \\alpha) \\, \\mathrm{CE}(z_S, y)

    ``alpha`` weights the *soft* term, as in Hinton's formulation; torchdistill's ``KDLoss``
    uses its ``alpha`` for the hard term instead. The cross-entropy uses the raw student logits
    at :math:`T = 1`, also when ``standardize=True`` (which z-scores only the logits of the soft
    term, as in Sun et al.'s code).

    Rows whose label is ``ignore_index`` are left out of *both* terms, like rows outside
    ``mask`` (for token-level distillation: padding and prompt tokens carry no signal for
    either term); every reduction counts only the remaining rows. This differs from
    ``F.cross_entropy`` alone only in that those rows' KD term is dropped too.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        labels: ``[...]`` integer class indices in ``[0, C)`` or ``ignore_index``.
        temperature: :math:`T > 0` of the soft term (float, 0-dim or per-row tensor).
        alpha: weight of the soft term, in ``[0, 1]``.
        standardize: z-score the logits of the soft term (Sun et al., CVPR 2024).
        ignore_index: label value of rows to leave out.
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` (divides by rows x classes) or
            ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(hinton_loss(student, teacher, torch.tensor([1]), alpha=0.5).item(), 4)
        1.0732
    """
    check_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    check_unit_interval("alpha", alpha)
    rows_shape = student_logits.shape[:-1]
    check_mask(mask, rows_shape)
    labels = check_labels(labels, student_logits, ignore_index)
    ignored = labels == ignore_index
    if bool(ignored.any()):
        mask = ~ignored if mask is None else mask & ~ignored
    student_rows, teacher_rows, row_temperature = selected_pair(
        student_logits, teacher_logits, temperature, reduction, mask
    )
    label_rows = labels.reshape(-1) if mask is None else labels.reshape(-1)[mask.reshape(-1)]
    dtype = compute_dtype(student_rows, teacher_rows)
    rows = student_rows.new_zeros(student_rows.shape[0], dtype=dtype)
    if alpha > 0:
        soft_student, soft_teacher = student_rows, teacher_rows
        if standardize:
            soft_student = standardize_logits(student_rows)
            soft_teacher = standardize_logits(teacher_rows)
        soft = divergence_rows("forward_kl", soft_student, soft_teacher, row_temperature)
        rows = alpha * soft
    if alpha < 1:
        hard = F.cross_entropy(student_rows.to(dtype), label_rows, reduction="none")
        rows = rows + (1.0 - alpha) * hard
    return reduce_rows(
        rows, reduction, rows_shape=rows_shape, mask=mask, elements_per_row=student_logits.shape[-1]
    )


# --------------------------------------------------------------------------- other divergences


def soft_ce_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Cross-entropy with the teacher's soft targets (Hinton et al., 2015).

    .. math::
        \\ell = T^2 \\, H(p_T, p_S) = -T^2 \\sum_c p_{T,c} \\log p_{S,c}

    Equal to :func:`kd_loss` plus :math:`T^2` times the teacher's entropy, so it has the same
    student gradient but is not 0 when the student matches the teacher.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        temperature: :math:`T > 0` (float, 0-dim or per-row tensor).
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(soft_ce_loss(student, teacher).item(), 4)
        1.3355
    """
    return divergence_loss(
        "soft_ce",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
    )


@register("kd", functional=kd_loss, signature="logits", family="logit")
class KDLoss(LogitLoss):
    """Module form of :func:`kd_loss`.

    Example:
        >>> import torch
        >>> loss = KDLoss(temperature=4.0)
        >>> loss
        KDLoss(temperature=4.0, reduction='batchmean')
        >>> loss(torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(0.)
    """

    _shown = ("temperature", "reduction")
    functional = staticmethod(kd_loss)

    def __init__(
        self,
        temperature: float | Tensor = 1.0,
        standardize: bool = False,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.store(temperature=temperature, standardize=standardize, reduction=reduction)


@register("ls_kd", functional=ls_kd_loss, signature="logits", family="logit")
class LSKDLoss(LogitLoss):
    """Module form of :func:`ls_kd_loss` (KD on standardized logits).

    Example:
        >>> LSKDLoss()
        LSKDLoss(temperature=2.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")
    functional = staticmethod(ls_kd_loss)

    def __init__(self, temperature: float | Tensor = 2.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.store(temperature=temperature, reduction=reduction)


@register("hinton", functional=hinton_loss, signature="logits_labels", family="logit")
class HintonLoss(LogitLoss):
    """Module form of :func:`hinton_loss` (``alpha`` weights the soft term).

    Example:
        >>> HintonLoss()
        HintonLoss(temperature=4.0, alpha=0.9, ignore_index=-100, reduction='batchmean')
    """

    _shown = ("temperature", "alpha", "ignore_index", "reduction")

    def __init__(
        self,
        temperature: float | Tensor = 4.0,
        alpha: float = 0.9,
        standardize: bool = False,
        ignore_index: int = -100,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.store(
            temperature=temperature,
            alpha=alpha,
            standardize=standardize,
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
        return hinton_loss(student_logits, teacher_logits, labels, mask=mask, **options)


@register("soft_ce", functional=soft_ce_loss, signature="logits", family="logit")
class SoftCELoss(LogitLoss):
    """Module form of :func:`soft_ce_loss`.

    Example:
        >>> SoftCELoss(temperature=2.0)
        SoftCELoss(temperature=2.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")
    functional = staticmethod(soft_ce_loss)

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.store(temperature=temperature, reduction=reduction)
