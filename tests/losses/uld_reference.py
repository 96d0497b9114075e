"""Brute-force float64 references of ULD (Boizard et al., TMLR 2025) with explicit loops:
softmax each side, sort descending, zero-pad the shorter to ``max(V_S, V_T)``, sum ``|p - q|``.
"""

from __future__ import annotations

import math

import numpy as np


def softmax_row(logits: np.ndarray, temperature: float) -> list[float]:
    scaled = [float(z) / temperature for z in logits]
    top = max(scaled)
    weights = [math.exp(z - top) for z in scaled]
    total = math.fsum(weights)
    return [w / total for w in weights]


def uld_row(student: np.ndarray, teacher: np.ndarray, temperature: float = 1.0) -> float:
    """``sum_i |p_(i) - q_(i)|`` over the sorted, zero-padded probabilities of one row."""
    p = sorted(softmax_row(student, temperature), reverse=True)
    q = sorted(softmax_row(teacher, temperature), reverse=True)
    width = max(len(p), len(q))
    p += [0.0] * (width - len(p))
    q += [0.0] * (width - len(q))
    return math.fsum(abs(a - b) for a, b in zip(p, q, strict=True))


def ce_row(logits: np.ndarray, label: int) -> float:
    top = max(float(z) for z in logits)
    log_total = top + math.log(math.fsum(math.exp(float(z) - top) for z in logits))
    return log_total - float(logits[label])


def linear_row(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """``z_c = sum_h hidden_h weight_c,h (+ bias_c)`` by explicit loops."""
    return np.array(
        [
            math.fsum(float(hidden[h]) * float(weight[c, h]) for h in range(len(hidden)))
            + (0.0 if bias is None else float(bias[c]))
            for c in range(weight.shape[0])
        ]
    )


def _reduce(values: list[float], reduction: str, num_items_in_batch: float | None) -> float:
    if reduction == "sum":
        return math.fsum(values)
    divisor = num_items_in_batch if num_items_in_batch is not None else max(len(values), 1)
    return math.fsum(values) / divisor


def _total(
    student_rows: list[np.ndarray],
    teacher_rows: list[np.ndarray],
    labels: np.ndarray | None,
    *,
    temperature: float,
    hard_label_weight: float,
    ignore_index: int,
    reduction: str,
    num_items_in_batch: float | None,
) -> float:
    label_rows = [None] * len(student_rows) if labels is None else list(labels.reshape(-1))
    values = []
    for student, teacher, label in zip(student_rows, teacher_rows, label_rows, strict=True):
        if label is not None and label == ignore_index:
            continue
        value = uld_row(student, teacher, temperature)
        if hard_label_weight > 0:
            value += hard_label_weight * ce_row(student, int(label))
        values.append(value)
    return _reduce(values, reduction, num_items_in_batch)


def uld_reference(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch: float | None = None,
) -> float:
    """Dense ULD: per row ULD + w CE (T = 1), rows labelled ``ignore_index`` left out."""
    return _total(
        list(student_logits.reshape(-1, student_logits.shape[-1])),
        list(teacher_logits.reshape(-1, teacher_logits.shape[-1])),
        labels,
        temperature=temperature,
        hard_label_weight=hard_label_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )


def side_logits(
    hidden: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    scale: float = 1.0,
    softcap: float | None = None,
) -> list[np.ndarray]:
    """One side's logit rows ``c tanh(s (h W^T + b) / c)``, materialized row by row."""
    rows = []
    for row in hidden.reshape(-1, hidden.shape[-1]):
        logits = linear_row(row, weight, bias) * scale
        if softcap is not None:
            logits = np.array([softcap * math.tanh(z / softcap) for z in logits])
        rows.append(logits)
    return rows


def fused_linear_uld_reference(
    student_hidden: np.ndarray,
    student_weight: np.ndarray,
    teacher_hidden: np.ndarray,
    teacher_weight: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch: float | None = None,
    chunk_size: int | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
) -> float:
    """Fused ULD: materialize both logit rows, then the dense reference (``chunk_size`` does
    not change the value)."""
    del chunk_size
    return _total(
        side_logits(student_hidden, student_weight, None, student_logit_scale, student_softcap),
        side_logits(teacher_hidden, teacher_weight, None, teacher_logit_scale, teacher_softcap),
        labels,
        temperature=temperature,
        hard_label_weight=hard_label_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )
