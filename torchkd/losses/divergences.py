"""Output-level (logit) divergences besides the KD family: reverse KL, generalized JSD(β),
total variation distance and logit MSE.

Logits are ``[..., C]`` with the class dimension last; ``reduction`` and ``mask`` as in
:mod:`torchkd.losses.logit`, whose numerics (float32 at least, ``-inf`` classes, huge logits,
large temperatures through :mod:`torchkd.losses.kl`) these share.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchkd.losses._common import (
    check_unit_interval,
    reduce_rows,
    upcast,
)
from torchkd.losses._logit_common import LogitLoss, divergence_loss, selected_pair
from torchkd.losses.kl import Divergence
from torchkd.losses.registry import register

__all__ = [
    "JSDLoss",
    "LogitMSELoss",
    "ReverseKLLoss",
    "TVDLoss",
    "jsd_loss",
    "logit_mse_loss",
    "reverse_kl_loss",
    "tvd_loss",
]


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
    return divergence_loss(
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
    :math:`T^2 \\mathrm{KL}(p_S \\| p_T)` (TRL's GKD trainer and Liger-Kernel since v0.5.6 use
    the same β, without the :math:`T^2`: divide by it; docs/token_kd.md, "Conventions"). The
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
    return divergence_loss(
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
    temperatures. Computed by the kernels of :mod:`torchkd.losses.kl` (closed-form gradient).

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
    return divergence_loss(
        "tvd",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
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
    student_rows, teacher_rows, _ = selected_pair(
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


@register("reverse_kl", functional=reverse_kl_loss, signature="logits", family="logit")
class ReverseKLLoss(LogitLoss):
    """Module form of :func:`reverse_kl_loss`.

    Example:
        >>> ReverseKLLoss()
        ReverseKLLoss(temperature=1.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")
    functional = staticmethod(reverse_kl_loss)

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.store(temperature=temperature, reduction=reduction)


@register("jsd", functional=jsd_loss, signature="logits", family="logit")
class JSDLoss(LogitLoss):
    """Module form of :func:`jsd_loss`.

    Example:
        >>> JSDLoss(beta=0.1)
        JSDLoss(beta=0.1, temperature=1.0, reduction='batchmean')
    """

    _shown = ("beta", "temperature", "reduction")
    functional = staticmethod(jsd_loss)

    def __init__(
        self, beta: float = 0.5, temperature: float | Tensor = 1.0, reduction: str = "batchmean"
    ) -> None:
        super().__init__()
        self.store(beta=beta, temperature=temperature, reduction=reduction)


@register("tvd", functional=tvd_loss, signature="logits", family="logit")
class TVDLoss(LogitLoss):
    """Module form of :func:`tvd_loss`.

    Example:
        >>> TVDLoss()
        TVDLoss(temperature=1.0, reduction='batchmean')
    """

    _shown = ("temperature", "reduction")
    functional = staticmethod(tvd_loss)

    def __init__(self, temperature: float | Tensor = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.store(temperature=temperature, reduction=reduction)


@register("logit_mse", functional=logit_mse_loss, signature="logits", family="logit")
class LogitMSELoss(LogitLoss):
    """Module form of :func:`logit_mse_loss`.

    Example:
        >>> LogitMSELoss(reduction="mean")
        LogitMSELoss(reduction='mean')
    """

    _shown = ("reduction",)

    def __init__(self, reduction: str = "batchmean") -> None:
        super().__init__()
        self.store(reduction=reduction)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        return logit_mse_loss(student_logits, teacher_logits, mask=mask, **self.hyperparameters())
