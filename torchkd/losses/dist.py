"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from torch import Tensor

from torchkd.losses._common import (
    check_mask,
    check_number,
    check_pair,
    check_reduction,
    check_temperature,
    select_rows,
    upcast,
)
from torchkd.losses._logit_common import LogitLoss
from torchkd.losses.registry import register

__all__ = ["DISTLoss", "dist_loss"]

DIST_REDUCTIONS: tuple[str, ...] = ("batchmean", "mean")


def _check_dist_reduction(reduction: str) -> None:
    check_reduction(reduction)
    if reduction not in DIST_REDUCTIONS:
        raise ValueError(
            f"dist_loss supports reduction in {DIST_REDUCTIONS}, got {reduction!r}: its "
            "intra-class term correlates each class over the whole batch, so it has no "
            "per-row value to return ('none') or sum ('sum')"
        )


def _check_weight(name: str, value: float) -> None:
    check_number(name, value, minimum=0.0)


def _pearson_rows(first: Tensor, second: Tensor, eps: float) -> Tensor:
    """Pearson correlation of matching rows of ``[N, D]`` tensors, ``eps`` in the denominator."""
    first_centered = first - first.mean(dim=-1, keepdim=True)
    second_centered = second - second.mean(dim=-1, keepdim=True)
    covariance = (first_centered * second_centered).sum(dim=-1)
    norms = first_centered.norm(dim=-1) * second_centered.norm(dim=-1)
    return covariance / (norms + eps)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    r"""DIST: match the teacher's predictions by correlation instead of exact probabilities.

    DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022)
    replaces KL with a Pearson-correlation distance, which keeps the teacher's ranking of
    classes (inter-class relation, per sample) and of samples (intra-class relation, per
    class over the batch) without forcing the student to match the probabilities exactly.
    With :math:`P^S, P^T \in \mathbb{R}^{N \times C}` the softmax outputs at temperature
    :math:`T` of the N selected rows:

    .. math::

        \mathcal{L} = T^2 \Big( \beta\, \frac{1}{N} \sum_{i=1}^{N}
            \big(1 - \rho(P^S_{i,:}, P^T_{i,:})\big)
            + \gamma\, \frac{1}{C} \sum_{c=1}^{C} \big(1 - \rho(P^S_{:,c}, P^T_{:,c})\big) \Big),
        \qquad
        \rho(u, v) = \frac{\langle u - \bar u,\, v - \bar v\rangle}
            {\lVert u - \bar u\rVert\, \lVert v - \bar v\rVert + \epsilon}

    as in the authors' code (``eps`` added to the product of the norms). Token logits
    ``[B, L, V]`` are flattened to ``N = B L`` rows, so the intra-class term correlates
    every selected token.

    Reduction: the intra-class term is one number for the whole batch, so the loss has no
    per-row value. ``"batchmean"`` (default) and ``"mean"`` both return the formula above
    (each term is already a mean); ``"sum"`` and ``"none"`` raise ``ValueError``. With a
    single selected row each centered class column is zero, so :math:`\rho = 0` and the
    intra-class term is the constant :math:`\gamma T^2` (no gradient); with no selected rows
    the loss is 0. DIST is not zero when student equals teacher: it is
    :math:`T^2 (\beta\,\overline{\epsilon / (\lVert u \rVert^2 + \epsilon)} + \dots)`, tiny
    unless a row or column is nearly constant. A constant row (e.g. the uniform output of a
    zero-initialised classifier) has no defined correlation: :math:`\rho = 0` there and, as in
    the reference, its gradient is of order :math:`1/\epsilon`.

    Computation is in float32 at least (half-precision inputs are upcast, the result is
    float32).

    Args:
        student_logits: ``[..., C]`` student logits.
        teacher_logits: ``[..., C]`` teacher logits.
        beta: weight of the inter-class (per sample) term, ``>= 0``.
        gamma: weight of the intra-class (per class, over the batch) term, ``>= 0``.
        temperature: softmax temperature ``T > 0`` (the paper uses 1 on ImageNet, 4 on
            CIFAR-100).
        eps: added to the product of the norms in the correlation.
        reduction: ``"batchmean"`` or ``"mean"`` (identical, see above).
        mask: optional bool ``[...]``; only ``True`` rows enter both terms.

    Returns:
        A scalar loss.

    Example:
        >>> import torch
        >>> student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]])
        >>> teacher = torch.tensor([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0], [0.0, 0.0, 2.0]])
        >>> round(dist_loss(student, teacher).item(), 4)
        0.0284
    """
    check_pair(student_logits, teacher_logits)
    rows_shape = student_logits.shape[:-1]
    check_mask(mask, rows_shape)
    check_temperature(temperature)
    _check_dist_reduction(reduction)
    _check_weight("beta", beta)
    _check_weight("gamma", gamma)
    check_number("eps", eps, minimum=0.0)

    student_rows = upcast(select_rows(student_logits, mask), teacher_logits)
    teacher_rows = upcast(select_rows(teacher_logits, mask), student_logits)
    if student_rows.shape[0] == 0:
        return student_rows.sum()  # exactly 0, with a zero gradient
    student_probs = (student_rows / temperature).softmax(dim=-1)
    teacher_probs = (teacher_rows / temperature).softmax(dim=-1)
    inter_class = 1.0 - _pearson_rows(student_probs, teacher_probs, eps).mean()
    intra_class = 1.0 - _pearson_rows(student_probs.T, teacher_probs.T, eps).mean()
    return temperature**2 * (beta * inter_class + gamma * intra_class)


@register("dist", functional=dist_loss, signature="logits", family="logit")
class DISTLoss(LogitLoss):
    """Module form of :func:`dist_loss`; stores the hyperparameters.

    Example:
        >>> DISTLoss(temperature=4.0)
        DISTLoss(beta=1.0, gamma=1.0, temperature=4.0, eps=1e-08, reduction='batchmean')
    """

    _shown = ("beta", "gamma", "temperature", "eps", "reduction")
    functional = staticmethod(dist_loss)

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        eps: float = 1e-8,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        _check_weight("beta", beta)
        _check_weight("gamma", gamma)
        check_temperature(temperature)
        _check_dist_reduction(reduction)
        self.store(beta=beta, gamma=gamma, temperature=temperature, eps=eps, reduction=reduction)
