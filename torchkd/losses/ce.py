"""Hard-label cross-entropy, the supervised term every distillation recipe blends with."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from torchkd.losses._common import (
    check_floating,
    check_labels,
    check_mask,
    check_unit_interval,
    reduce_rows,
    select_rows,
    upcast,
    with_float64_rows,
)
from torchkd.losses.registry import register

__all__ = ["CELoss", "ce_loss"]


def ce_loss(
    student_logits: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    mask: Tensor | None = None,
) -> Tensor:
    r"""Cross-entropy between the student's logits and hard labels.

    .. math::
        \mathcal{L} = -\sum_c q_c \log \mathrm{softmax}(z)_c, \quad
        q = (1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon / C

    Classes whose logit is ``-inf`` (vocabulary masking) are not counted in :math:`C`: label
    smoothing spreads :math:`\varepsilon` over the classes that exist (with no ``-inf`` this is
    ``F.cross_entropy``'s smoothing).

    Rows whose label equals ``ignore_index`` (and rows outside ``mask``) are excluded; with
    ``"batchmean"`` (and ``"mean"``: one value per row, so they coincide) the sum is divided by the
    number of remaining rows, as ``F.cross_entropy`` does with ``reduction="mean"``. Computed,
    summed and returned in float32 for half-precision inputs; labels may have any integer dtype.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, 0.0]])
        >>> round(ce_loss(logits, torch.tensor([0])).item(), 4)
        0.2395
    """
    check_floating("student_logits", student_logits)
    labels = check_labels(labels, student_logits, ignore_index)
    check_mask(mask, student_logits.shape[:-1])
    check_unit_interval("label_smoothing", label_smoothing)
    rows_shape = student_logits.shape[:-1]
    keep = labels != ignore_index
    keep = keep if mask is None else keep & mask
    logits = upcast(select_rows(student_logits, keep))
    kept_labels = labels.reshape(-1)[keep.reshape(-1)]

    def row_fn(row_logits: Tensor, row_labels: Tensor) -> Tensor:
        log_probs = row_logits.log_softmax(dim=-1)
        rows = -log_probs.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        if label_smoothing == 0:
            return rows
        # Spread over the classes that exist: -inf logits (vocabulary masking) get no mass.
        present = row_logits != float("-inf")
        smooth = -torch.where(present, log_probs, 0.0).sum(-1) / present.sum(-1).clamp(min=1)
        return (1.0 - label_smoothing) * rows + label_smoothing * smooth

    # Logits near the float32 range overflow z - max(z); such rows are redone in float64.
    per_row = with_float64_rows(row_fn, (logits, kept_labels), lambda rows: ~torch.isfinite(rows))
    return reduce_rows(per_row, reduction, rows_shape=rows_shape, mask=keep)


@register("ce", functional=ce_loss, signature="labels", family="logit")
class CELoss(nn.Module):
    """Module form of :func:`ce_loss`."""

    def __init__(
        self, label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "batchmean"
    ) -> None:
        super().__init__()
        check_unit_interval("label_smoothing", label_smoothing)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, student_logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        return ce_loss(
            student_logits,
            labels,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
