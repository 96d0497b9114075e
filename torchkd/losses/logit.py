"""Output-level (logit) distillation losses: KD, Hinton's blend, soft CE, reverse KL, JSD, TVD,
logit MSE and logit standardization.

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import (
    check_labels,
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
    check_unit_interval,
    compute_dtype,
    largest_magnitude,
    reduce_rows,
    select_rows,
    upcast,
)
from torchkd.losses.kl import Divergence, divergence_rows
from torchkd.losses.registry import register

__all__ = [
    "HintonLoss",
    "JSDLoss",
    "KDLoss",
    "LSKDLoss",
    "LogitMSELoss",
    "ReverseKLLoss",
    "SoftCELoss",
    "TVDLoss",
    "hinton_loss",
    "jsd_loss",
    "kd_loss",
    "logit_mse_loss",
    "ls_kd_loss",
    "reverse_kl_loss",
    "soft_ce_loss",
    "standardize_logits",
    "tvd_loss",
]

STANDARDIZE_EPS = 1e-7


# --------------------------------------------------------------------------- shared steps


def standardize_logits(logits: Tensor, eps: float = STANDARDIZE_EPS) -> Tensor:
    """Z-score each row: ``(z - mean(z)) / (std(z) + eps)`` over the class dimension.

    As in the reference code of Sun et al. (CVPR 2024): the sample standard deviation (divisor
    ``C - 1``) and ``eps`` added to it, not under the square root. Half-precision logits are
    standardized in float32. ``-inf`` entries (masked classes) stay ``-inf`` and the other
    entries are standardized among themselves. Each row is scaled by its largest magnitude
    before squaring (the result is scale-free, ``eps`` scaled alike), so logits near the
    float32 range do not overflow.

    .. math::
        \\tilde z_c = \\frac{z_c - \\bar z}{\\sigma(z) + \\epsilon}, \\qquad
        \\sigma(z) = \\sqrt{\\tfrac{1}{C-1} \\textstyle\\sum_c (z_c - \\bar z)^2}

    Example:
        >>> import torch
        >>> standardize_logits(torch.tensor([[1.0, 2.0, 3.0]])).round(decimals=4)
        tensor([[-1.,  0.,  1.]])
    """
    if logits.shape[-1] < 2:
        raise ValueError(
            f"standardizing logits needs at least 2 classes, got shape {tuple(logits.shape)}"
        )
    values = upcast(logits)
    if values.numel() == 0:
        return values
    kept = values != float("-inf")
    count = kept.sum(dim=-1, keepdim=True)
    # Work on 0 in place of -inf, so no -inf enters an operation that has a derivative.
    safe = torch.where(kept, values, 0.0)
    scale = largest_magnitude(safe, -1)
    scaled = safe / scale
    mean = scaled.sum(dim=-1, keepdim=True) / count.clamp(min=1)
    centered = torch.where(kept, scaled - mean, 0.0)
    spread = largest_magnitude(centered, -1)
    unit = centered / spread
    std = (unit.square().sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    standardized = unit / (std + eps / (scale * spread))
    return torch.where(kept, standardized, values)


def _row_temperature(
    temperature: float | Tensor, rows_shape: torch.Size, mask: Tensor | None
) -> float | Tensor:
    """The temperature as a float, a 0-dim tensor, or the ``[N]`` values of the selected rows."""
    check_temperature(temperature, rows_shape)
    if not isinstance(temperature, Tensor):
        return float(temperature)
    if temperature.dim() == 0:
        return temperature
    flat = temperature.reshape(-1)
    return flat if mask is None else flat[mask.reshape(-1)]


def _selected_pair(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float | Tensor,
    reduction: str,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, float | Tensor]:
    """Validate a student/teacher pair; return the selected ``[N, C]`` rows and temperatures."""
    check_pair(student_logits, teacher_logits)
    check_reduction(reduction)
    rows_shape = student_logits.shape[:-1]
    check_mask(mask, rows_shape)
    row_temperature = _row_temperature(temperature, rows_shape, mask)
    return select_rows(student_logits, mask), select_rows(teacher_logits, mask), row_temperature


def _divergence_loss(
    kind: Divergence,
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor,
    reduction: str,
    mask: Tensor | None,
    beta: float = 0.5,
    standardize: bool = False,
) -> Tensor:
    student_rows, teacher_rows, row_temperature = _selected_pair(
        student_logits, teacher_logits, temperature, reduction, mask
    )
    if standardize:
        student_rows, teacher_rows = (
            standardize_logits(student_rows),
            standardize_logits(teacher_rows),
        )
    rows = divergence_rows(kind, student_rows, teacher_rows, row_temperature, beta=beta)
    return reduce_rows(
        rows,
        reduction,
        rows_shape=student_logits.shape[:-1],
        mask=mask,
        elements_per_row=student_logits.shape[-1],
    )


def _format(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor(shape={tuple(value.shape)})" if value.dim() else f"{value.item():g}"
    return repr(value)


class _LogitLoss(nn.Module):
    """Stores hyperparameters and shows them in ``repr``; subclasses call their functional."""

    _shown: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        shown = [f"{name}={_format(getattr(self, name))}" for name in self._shown]
        if getattr(self, "standardize", False):
            shown.insert(-1, "standardize=True")
        return ", ".join(shown)


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
    return _divergence_loss(
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
    student_rows, teacher_rows, row_temperature = _selected_pair(
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
    return _divergence_loss(
        "soft_ce",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
    )


def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Reverse KL, mode-seeking (Gu et al., "MiniLLM: Knowledge Distillation of Large Language
    Models", ICLR 2024).

    .. math::
        \\ell = T^2 \\, \\mathrm{KL}(p_S \\,\\|\\, p_T) = T^2 \\sum_c p_{S,c}
        \\left(\\log p_{S,c} - \\log p_{T,c}\\right)

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
        >>> round(reverse_kl_loss(student, teacher).item(), 4)
        0.4044
    """
    return _divergence_loss(
        "reverse_kl",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
    )


def jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence (Agarwal et al., "On-Policy Distillation of Language
    Models: Learning from Self-Generated Mistakes", ICLR 2024, the GKD loss).

    .. math::
        \\ell = T^2 \\left[\\beta \\, \\mathrm{KL}(p_T \\,\\|\\, m)
        + (1 - \\beta) \\, \\mathrm{KL}(p_S \\,\\|\\, m)\\right],
        \\quad m = \\beta p_T + (1 - \\beta) p_S

    The endpoints are the limits of :math:`\\mathrm{JSD}_\\beta / \\beta` and
    :math:`\\mathrm{JSD}_\\beta / (1 - \\beta)`: ``beta=0`` gives the forward
    :math:`T^2 \\mathrm{KL}(p_T \\| p_S)` and ``beta=1`` the reverse
    :math:`T^2 \\mathrm{KL}(p_S \\| p_T)` (TRL's GKD trainer uses the same convention). The
    loss therefore *jumps* at the endpoints: :math:`\\mathrm{JSD}_\\beta \\to 0` as
    :math:`\\beta \\to 0`, while ``beta=0`` is the full KL.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        beta: mixture weight of the teacher, in ``[0, 1]``.
        temperature: :math:`T > 0` (float, 0-dim or per-row tensor).
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(jsd_loss(student, teacher).item(), 4)
        0.1024
    """
    check_unit_interval("beta", beta)
    kind: Divergence = "forward_kl" if beta == 0 else "reverse_kl" if beta == 1 else "jsd"
    return _divergence_loss(
        kind,
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        beta=float(beta),
    )


def tvd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Total variation distance between the softened distributions (used for distillation by
    Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation", ACL 2023).

    .. math::
        \\ell = \\tfrac{1}{2} \\sum_c \\left| p_{T,c} - p_{S,c} \\right|,
        \\quad p = \\mathrm{softmax}(z / T)

    No :math:`T^2` factor: TVD is a bounded distance (in ``[0, 1]`` per row), not a divergence
    whose gradient shrinks like :math:`1/T^2`, and unscaled its values stay comparable across
    temperatures.

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
        >>> round(tvd_loss(student, teacher).item(), 4)
        0.4374
    """
    student_rows, teacher_rows, row_temperature = _selected_pair(
        student_logits, teacher_logits, temperature, reduction, mask
    )
    if isinstance(row_temperature, Tensor) and row_temperature.dim() == 1:
        row_temperature = row_temperature.unsqueeze(-1)

    def probs(logits: Tensor) -> Tensor:
        return torch.softmax(upcast(logits, student_rows, teacher_rows) / row_temperature, dim=-1)

    rows = 0.5 * (probs(teacher_rows) - probs(student_rows)).abs().sum(-1)
    return reduce_rows(
        rows,
        reduction,
        rows_shape=student_logits.shape[:-1],
        mask=mask,
        elements_per_row=student_logits.shape[-1],
    )


def logit_mse_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Squared error between raw logits (Ba & Caruana, "Do Deep Nets Really Need to be Deep?",
    NeurIPS 2014; compared with KL by Kim et al., IJCAI 2021).

    .. math::
        \\ell_{\\text{row}} = \\sum_c (z_{S,c} - z_{T,c})^2

    ``"batchmean"`` divides the sum by the number of rows, ``"mean"`` by the number of elements
    (equal to ``F.mse_loss``). Classes that are ``-inf`` in both student and teacher (vocabulary
    masking) add 0; a class masked on one side only gives ``inf``.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> logit_mse_loss(student, teacher)
        tensor(2.2500)
    """
    student_rows, teacher_rows, _ = _selected_pair(
        student_logits, teacher_logits, 1.0, reduction, mask
    )
    student_rows = upcast(student_rows, teacher_rows)
    teacher_rows = upcast(teacher_rows, student_rows)
    shared = (student_rows == teacher_rows) & torch.isinf(student_rows)
    difference = torch.where(shared, 0.0, student_rows) - torch.where(shared, 0.0, teacher_rows)
    rows = difference.square().sum(-1)
    return reduce_rows(
        rows,
        reduction,
        rows_shape=student_logits.shape[:-1],
        mask=mask,
        elements_per_row=student_logits.shape[-1],
    )


# --------------------------------------------------------------------------- modules


@register("kd", functional=kd_loss, signature="logits", family="logit")
class KDLoss(_LogitLoss):
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

    def __init__(
        self,
        temperature: float | Tensor = 1.0,
        standardize: bool = False,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.temperature, self.standardize, self.reduction = temperature, standardize, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return kd_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature if temperature is None else temperature,
            standardize=self.standardize,
            reduction=self.reduction,
            mask=mask,
        )


@register("ls_kd", functional=ls_kd_loss, signature="logits", family="logit")
class LSKDLoss(_LogitLoss):
    """Module form of :func:`ls_kd_loss` (KD on standardized logits).

    Example:
        >>> LSKDLoss()
        LSKDLoss(temperature=2.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")

    def __init__(self, temperature: float | Tensor = 2.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature, self.reduction = temperature, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return ls_kd_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature if temperature is None else temperature,
            reduction=self.reduction,
            mask=mask,
        )


@register("hinton", functional=hinton_loss, signature="logits_labels", family="logit")
class HintonLoss(_LogitLoss):
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
        self.temperature, self.alpha, self.standardize = temperature, alpha, standardize
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return hinton_loss(
            student_logits,
            teacher_logits,
            labels,
            temperature=self.temperature if temperature is None else temperature,
            alpha=self.alpha,
            standardize=self.standardize,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            mask=mask,
        )


@register("soft_ce", functional=soft_ce_loss, signature="logits", family="logit")
class SoftCELoss(_LogitLoss):
    """Module form of :func:`soft_ce_loss`.

    Example:
        >>> SoftCELoss(temperature=2.0)
        SoftCELoss(temperature=2.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature, self.reduction = temperature, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return soft_ce_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature if temperature is None else temperature,
            reduction=self.reduction,
            mask=mask,
        )


@register("reverse_kl", functional=reverse_kl_loss, signature="logits", family="logit")
class ReverseKLLoss(_LogitLoss):
    """Module form of :func:`reverse_kl_loss`.

    Example:
        >>> ReverseKLLoss()
        ReverseKLLoss(temperature=1.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature, self.reduction = temperature, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return reverse_kl_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature if temperature is None else temperature,
            reduction=self.reduction,
            mask=mask,
        )


@register("jsd", functional=jsd_loss, signature="logits", family="logit")
class JSDLoss(_LogitLoss):
    """Module form of :func:`jsd_loss`.

    Example:
        >>> JSDLoss(beta=0.1)
        JSDLoss(beta=0.1, temperature=1.0, reduction='batchmean')
    """

    _shown = ("beta", "temperature", "reduction")

    def __init__(
        self, beta: float = 0.5, temperature: float | Tensor = 1.0, reduction: str = "batchmean"
    ) -> None:
        super().__init__()
        self.beta, self.temperature, self.reduction = beta, temperature, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return jsd_loss(
            student_logits,
            teacher_logits,
            beta=self.beta,
            temperature=self.temperature if temperature is None else temperature,
            reduction=self.reduction,
            mask=mask,
        )


@register("tvd", functional=tvd_loss, signature="logits", family="logit")
class TVDLoss(_LogitLoss):
    """Module form of :func:`tvd_loss`.

    Example:
        >>> TVDLoss()
        TVDLoss(temperature=1.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature, self.reduction = temperature, reduction

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        return tvd_loss(
            student_logits,
            teacher_logits,
            temperature=self.temperature if temperature is None else temperature,
            reduction=self.reduction,
            mask=mask,
        )


@register("logit_mse", functional=logit_mse_loss, signature="logits", family="logit")
class LogitMSELoss(_LogitLoss):
    """Module form of :func:`logit_mse_loss`.

    Example:
        >>> LogitMSELoss(reduction="mean")
        LogitMSELoss(reduction='mean')
    """

    _shown = ("reduction",)

    def __init__(self, reduction: str = "batchmean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        return logit_mse_loss(student_logits, teacher_logits, reduction=self.reduction, mask=mask)
