"""KL losses that mix: DistiLLM's skew forward and reverse KL, and adaptive KL (AKL).

Logits are ``[..., C]`` with the class dimension last; ``reduction`` and ``mask`` as in
:mod:`torchkd.losses.logit`, whose numerics (float32 at least, ``-inf`` classes, huge logits,
large temperatures through :mod:`torchkd.losses.kl`) these share. The formulas and their
closed-form gradients are the entries of :mod:`torchkd.losses.divergence_mixtures`; the same
divergences distil from hidden states through :func:`~torchkd.losses.fused_linear_kd_loss`
(``divergence="skew_forward_kl"``, ... with ``skew_lambda=`` / ``akl_mu=``).
"""

from __future__ import annotations

from torch import Tensor

from torchkd.losses._common import check_unit_interval
from torchkd.losses._logit_common import LogitLoss, divergence_loss
from torchkd.losses.kl import Divergence
from torchkd.losses.registry import register

__all__ = [
    "AKLLoss",
    "SkewForwardKLLoss",
    "SkewReverseKLLoss",
    "akl_loss",
    "skew_forward_kl_loss",
    "skew_reverse_kl_loss",
]


def _skew_loss(
    kind: Divergence,
    plain: Divergence,
    student_logits: Tensor,
    teacher_logits: Tensor,
    skew_lambda: float,
    temperature: float | Tensor,
    reduction: str,
    mask: Tensor | None,
) -> Tensor:
    """The skew KL ``kind``; λ = 0 takes the kernels of the ``plain`` KL, its value."""
    check_unit_interval("skew_lambda", skew_lambda, include_one=False)
    return divergence_loss(
        plain if skew_lambda == 0 else kind,
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        beta=float(skew_lambda),
    )


def skew_forward_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew_lambda: float = 0.1,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Skew forward KL (Ko et al., "DistiLLM: Towards Streamlined Distillation for Large
    Language Models", ICML 2024).

    .. math::
        \\ell = T^2 \\, \\mathrm{KL}\\left(p_T \\,\\|\\, \\lambda p_T + (1 - \\lambda) p_S\\right)

    The teacher's share :math:`\\lambda` of the mixture bounds the divergence by
    :math:`-\\log \\lambda` and its gradient where the student puts little mass on the
    teacher's tokens; ``skew_lambda=0`` is :func:`kd_loss`'s forward KL (DistiLLM's default is
    0.1). The log of the mixture is formed stably from :math:`\\log p_T - \\log p_S`
    (``logaddexp``), the gradient in closed form.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        skew_lambda: :math:`\\lambda \\in [0, 1)`, the teacher's weight in the mixture.
        temperature: :math:`T > 0` (float, 0-dim or per-row tensor).
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(skew_forward_kl_loss(student, teacher).item(), 4)
        0.346
    """
    return _skew_loss(
        "skew_forward_kl",
        "forward_kl",
        student_logits,
        teacher_logits,
        skew_lambda,
        temperature,
        reduction,
        mask,
    )


def skew_reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew_lambda: float = 0.1,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Skew reverse KL (Ko et al., "DistiLLM: Towards Streamlined Distillation for Large
    Language Models", ICML 2024).

    .. math::
        \\ell = T^2 \\, \\mathrm{KL}\\left(p_S \\,\\|\\, \\lambda p_S + (1 - \\lambda) p_T\\right)

    The student's share :math:`\\lambda` of the mixture keeps the divergence finite (at most
    :math:`-\\log \\lambda`) where the teacher puts no mass; ``skew_lambda=0`` is
    :func:`reverse_kl_loss` (DistiLLM's default is 0.1).

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        skew_lambda: :math:`\\lambda \\in [0, 1)`, the student's weight in the mixture.
        temperature: :math:`T > 0` (float, 0-dim or per-row tensor).
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(skew_reverse_kl_loss(student, teacher).item(), 4)
        0.3261
    """
    return _skew_loss(
        "skew_reverse_kl",
        "reverse_kl",
        student_logits,
        teacher_logits,
        skew_lambda,
        temperature,
        reduction,
        mask,
    )


def akl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    akl_mu: float = 0.5,
    temperature: float | Tensor = 1.0,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    """Adaptive KL (Wu et al., "Rethinking Kullback-Leibler Divergence in Knowledge
    Distillation for Large Language Models", COLING 2025).

    .. math::
        \\ell = T^2 \\left[\\frac{g_\\text{head}}{g_\\text{head} + g_\\text{tail}}
        \\mathrm{KL}(p_T \\| p_S) + \\frac{g_\\text{tail}}{g_\\text{head} + g_\\text{tail}}
        \\mathrm{KL}(p_S \\| p_T)\\right],
        \\quad g_\\text{head} = \\sum_{i \\in H} |p_{T,i} - p_{S,i}|

    per row, with :math:`H` the teacher's head: its most likely token and every token whose
    cumulative mass (descending, ties ranked by index) is at most :math:`\\mu`, as in the
    authors' ``get_ratio``, and :math:`g_\\text{tail}` the same sum over the other tokens.
    Where the student misses the head, forward KL (which fits the head) gets the weight, where
    it misses the tail, reverse KL. The weights are constants: no gradient flows through them,
    as in the paper's implementation, so the gradient is the weighted sum of the two KLs'
    gradients, not the derivative of the value. A row with :math:`p_S = p_T` (both KLs 0)
    weighs them 1/2 each. ``akl_mu=0`` puts the top token alone in the head.

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        akl_mu: :math:`\\mu \\in [0, 1]`, the teacher mass of the head (the paper's 0.5).
        temperature: :math:`T > 0` (float, 0-dim or per-row tensor).
        reduction: ``"batchmean"``, ``"sum"``, ``"mean"`` or ``"none"``.
        mask: bool ``[...]``: rows to include.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0]])
        >>> teacher = torch.tensor([[1.0, 1.5, -0.5]])
        >>> round(akl_loss(student, teacher).item(), 4)
        0.4257
    """
    check_unit_interval("akl_mu", akl_mu)
    return divergence_loss(
        "akl",
        student_logits,
        teacher_logits,
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        beta=float(akl_mu),
    )


# --------------------------------------------------------------------------- modules


class _SkewModule(LogitLoss):
    _shown = ("skew_lambda", "temperature", "reduction")

    def __init__(
        self,
        skew_lambda: float = 0.1,
        temperature: float | Tensor = 1.0,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        self.store(skew_lambda=skew_lambda, temperature=temperature, reduction=reduction)


@register("skew_forward_kl", functional=skew_forward_kl_loss, signature="logits", family="logit")
class SkewForwardKLLoss(_SkewModule):
    """Module form of :func:`skew_forward_kl_loss`.

    Example:
        >>> SkewForwardKLLoss(skew_lambda=0.2)
        SkewForwardKLLoss(skew_lambda=0.2, temperature=1.0, reduction='batchmean')
    """

    functional = staticmethod(skew_forward_kl_loss)


@register("skew_reverse_kl", functional=skew_reverse_kl_loss, signature="logits", family="logit")
class SkewReverseKLLoss(_SkewModule):
    """Module form of :func:`skew_reverse_kl_loss`.

    Example:
        >>> SkewReverseKLLoss()
        SkewReverseKLLoss(skew_lambda=0.1, temperature=1.0, reduction='batchmean')
    """

    functional = staticmethod(skew_reverse_kl_loss)


@register("akl", functional=akl_loss, signature="logits", family="logit")
class AKLLoss(LogitLoss):
    """Module form of :func:`akl_loss`.

    Example:
        >>> AKLLoss(akl_mu=0.6, temperature=2.0)
        AKLLoss(akl_mu=0.6, temperature=2.0, reduction='batchmean')
    """

    _shown = ("akl_mu", "temperature", "reduction")
    functional = staticmethod(akl_loss)

    def __init__(
        self, akl_mu: float = 0.5, temperature: float | Tensor = 1.0, reduction: str = "batchmean"
    ) -> None:
        super().__init__()
        self.store(akl_mu=akl_mu, temperature=temperature, reduction=reduction)
