r"""In-network self-distillation: "Be Your Own Teacher" (Zhang et al., ICCV 2019).

A network with early exits (:class:`torchkd.models.CNN1DExits`) is its own teacher: the deepest
exit's softmax and features teach every shallower exit. For exits :math:`i = 1 .. K` with
logits :math:`z_i` and features :math:`F_i`, the deepest exit's logits :math:`z_C` and
features :math:`F_C`, labels :math:`y` and temperature :math:`T`, the paper's loss of the
shallow exits is, per sample,

.. math::
    \ell = \sum_{i=1}^{K} (1 - \alpha)\, \mathrm{CE}(z_i, y)
        + \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(z_C / T) \,\|\,
          \mathrm{softmax}(z_i / T)\big)
        + \lambda\, \lVert F_i - F_C \rVert_2^2

with :math:`z_C` and :math:`F_C` detached (the deepest exit is a fixed target: it learns from
the labels alone, through the recipe's own ``ce`` term on the logits). The paper writes the
soft term as :math:`\alpha\,\mathrm{KL}(q^i, q^C)` of the temperature softmaxes; here it is
the distillation direction KL(teacher ‖ student) with the factor :math:`T^2`, which keeps its
gradient's scale independent of :math:`T` (Hinton et al., 2015), as in
:func:`torchkd.losses.kd_loss`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from torchkd.losses._common import (
    check_floating,
    check_labels,
    check_number,
    check_temperature,
    check_unit_interval,
    upcast,
)
from torchkd.losses._module import FunctionalOptionsModule, keyword_options
from torchkd.losses.registry import register

__all__ = ["BYOTLoss", "byot_loss"]

_REDUCTIONS = ("batchmean", "sum", "none")


def _check_exits(
    exit_logits: list[Tensor],
    exit_features: list[Tensor],
    final_logits: Tensor,
    final_features: Tensor,
) -> None:
    for name, value in (("exit_logits", exit_logits), ("exit_features", exit_features)):
        if not isinstance(value, list | tuple) or not value:
            raise TypeError(
                f"{name} must be a non-empty list of tensors, got {type(value).__name__}"
            )
    if len(exit_logits) != len(exit_features):
        raise ValueError(
            f"exit_logits and exit_features must have one entry per exit, got "
            f"{len(exit_logits)} and {len(exit_features)}"
        )
    check_floating("final_logits", final_logits)
    check_floating("final_features", final_features)
    if final_logits.dim() != 2:
        raise ValueError(f"final_logits must be [B, C], got {tuple(final_logits.shape)}")
    for index, (logits, features) in enumerate(zip(exit_logits, exit_features, strict=True)):
        check_floating(f"exit_logits[{index}]", logits)
        check_floating(f"exit_features[{index}]", features)
        if logits.shape != final_logits.shape:
            raise ValueError(
                f"exit_logits[{index}] must have the final logits' shape "
                f"{tuple(final_logits.shape)}, got {tuple(logits.shape)}"
            )
        if features.shape != final_features.shape:
            raise ValueError(
                f"exit_features[{index}] must have the final features' shape "
                f"{tuple(final_features.shape)}, got {tuple(features.shape)}"
            )


def byot_loss(
    exit_logits: list[Tensor],
    exit_features: list[Tensor],
    final_logits: Tensor,
    final_features: Tensor,
    labels: Tensor,
    *,
    temperature: float = 3.0,
    alpha: float = 0.3,
    hint_weight: float = 0.03,
    ignore_index: int = -100,
    reduction: str = "batchmean",
) -> Tensor:
    r"""The "Be Your Own Teacher" loss of the shallow exits (see the module docstring).

    Args:
        exit_logits: the :math:`K` shallow exits' logits, each ``[B, C]``.
        exit_features: their features, each of ``final_features``' shape ``[B, ...]``.
        final_logits: the deepest exit's logits :math:`z_C` ``[B, C]`` (detached here).
        final_features: the deepest exit's features :math:`F_C` ``[B, ...]`` (detached here).
        labels: ``[B]`` class indices.
        temperature: :math:`T`.
        alpha: :math:`\alpha` in [0, 1], the share of the KL term against the labels.
        hint_weight: :math:`\lambda \ge 0`, the weight of the feature hint.
        ignore_index: rows with this label (unlabeled samples) have no cross-entropy part;
            their KL and hint parts remain, and ``"batchmean"`` still divides by every row.
        reduction: ``"batchmean"`` (mean of :math:`\ell` over samples), ``"sum"`` or ``"none"``
            (``[B]``).

    Example:
        >>> import torch
        >>> logits, features = torch.randn(4, 3), torch.randn(4, 8)
        >>> loss = byot_loss([logits], [features], logits, features, torch.tensor([0, 1, 2, 0]))
        >>> bool(torch.isclose(loss, 0.7 * F.cross_entropy(logits, torch.tensor([0, 1, 2, 0]))))
        True
    """
    _check_exits(exit_logits, exit_features, final_logits, final_features)
    labels = check_labels(labels, final_logits, ignore_index)
    check_temperature(temperature)
    check_unit_interval("alpha", alpha)
    check_number("hint_weight", hint_weight, minimum=0.0)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    target_logits = upcast(final_logits.detach(), *exit_logits)
    target_features = upcast(final_features.detach(), *exit_features).flatten(1)
    targets = F.log_softmax(target_logits / temperature, dim=-1)
    rows = target_logits.new_zeros(target_logits.shape[0])
    for logits, features in zip(exit_logits, exit_features, strict=True):
        logits = upcast(logits, final_logits)
        ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
        log_student = F.log_softmax(logits / temperature, dim=-1)
        kl = (targets.exp() * (targets - log_student)).sum(-1)
        hint = (upcast(features, final_features).flatten(1) - target_features).pow(2).sum(-1)
        rows = rows + (1 - alpha) * ce + alpha * temperature**2 * kl + hint_weight * hint
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.mean()


@register("byot", functional=byot_loss, signature="self_exits", family="logit")
class BYOTLoss(FunctionalOptionsModule):
    """Module form of :func:`byot_loss`.

    Example:
        >>> import torch
        >>> loss = BYOTLoss(temperature=2.0)
        >>> logits, features = torch.randn(4, 3), torch.randn(4, 8)
        >>> loss([logits], [features], logits, features, torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    options = keyword_options(byot_loss, ())
    check_options = staticmethod(lambda options: check_temperature(options["temperature"]))

    def forward(
        self,
        exit_logits: list[Tensor],
        exit_features: list[Tensor],
        final_logits: Tensor,
        final_features: Tensor,
        labels: Tensor,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        options = self.hyperparameters(temperature=temperature)
        return byot_loss(
            exit_logits, exit_features, final_logits, final_features, labels, **options
        )
