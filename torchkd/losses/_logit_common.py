"""What the logit losses share: validating a student/teacher pair and its temperature,
computing a divergence row by row through :mod:`torchkd.losses.kl`, logit standardization,
and the base module that shows hyperparameters in ``repr``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from torchkd.losses._common import (
    check_mask,
    check_pair,
    check_reduction,
    check_temperature,
    largest_magnitude,
    reduce_rows,
    select_rows,
    upcast,
)
from torchkd.losses._module import HyperparameterModule
from torchkd.losses.kl import Divergence, divergence_rows

__all__ = [
    "STANDARDIZE_EPS",
    "LogitLoss",
    "divergence_loss",
    "format_value",
    "row_temperature",
    "selected_pair",
    "standardize_logits",
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

    A constant row (all kept entries equal, or a single kept entry: every other class ``-inf``)
    has :math:`\\sigma = 0`: it standardizes to 0, the uniform distribution over the kept
    classes. The derivative there is the limit of the formula: along any direction ``d``,
    :math:`\\tilde z(z + h d) = h (d - \\bar d) / (|h| \\sigma(d) + \\epsilon)`, so the derivative
    is :math:`(I - \\mathbf{1}\\mathbf{1}^\\top / C) / \\epsilon` and no gradient flows through
    :math:`\\sigma` (its variation is of second order next to :math:`\\epsilon`).

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
    variance = unit.square().sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
    # sqrt has an infinite derivative at 0; where the row is constant, sigma's variation is of
    # second order next to eps, so its derivative there is exactly 0 (see the docstring).
    spread_nonzero = variance > 0
    std = torch.where(spread_nonzero, torch.where(spread_nonzero, variance, 1.0).sqrt(), 0.0)
    standardized = unit / (std + eps / (scale * spread))
    return torch.where(kept, standardized, values)


def row_temperature(
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


def selected_pair(
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
    temperatures = row_temperature(temperature, rows_shape, mask)
    return select_rows(student_logits, mask), select_rows(teacher_logits, mask), temperatures


def divergence_loss(
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
    """One divergence of :mod:`torchkd.losses.kl` per selected row, reduced."""
    student_rows, teacher_rows, temperatures = selected_pair(
        student_logits, teacher_logits, temperature, reduction, mask
    )
    if standardize:
        student_rows, teacher_rows = (
            standardize_logits(student_rows),
            standardize_logits(teacher_rows),
        )
    rows = divergence_rows(kind, student_rows, teacher_rows, temperatures, beta=beta)
    return reduce_rows(
        rows,
        reduction,
        rows_shape=student_logits.shape[:-1],
        mask=mask,
        elements_per_row=student_logits.shape[-1],
    )


def format_value(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor(shape={tuple(value.shape)})" if value.dim() else f"{value.item():g}"
    return repr(value)


class LogitLoss(HyperparameterModule):
    """Stores hyperparameters (:meth:`store`) and shows those in ``_shown`` in ``repr``. A
    ``"logits"`` loss sets ``functional`` and inherits :meth:`forward`; others define their own
    ``forward`` calling their functional with :meth:`hyperparameters`."""

    _shown: tuple[str, ...] = ()
    functional: Callable[..., Tensor]

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor | None = None,
        temperature: float | Tensor | None = None,
    ) -> Tensor:
        """``functional(student_logits, teacher_logits, mask=mask, **hyperparameters)``;
        ``temperature`` replaces the stored one for this call."""
        options = self.hyperparameters(temperature=temperature)
        return self.functional(student_logits, teacher_logits, mask=mask, **options)

    def extra_repr(self) -> str:
        shown = [f"{name}={format_value(getattr(self, name))}" for name in self._shown]
        if getattr(self, "standardize", False):
            shown.insert(-1, "standardize=True")
        return ", ".join(shown)
