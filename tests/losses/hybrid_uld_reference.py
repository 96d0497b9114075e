"""Brute-force float64 reference of the hybrid cross-tokenizer loss with explicit loops: the
forward KL between the two distributions renormalised to the shared tokens (times T^2), plus
ULD between the sorted, zero-padded probabilities of the tokens outside the map."""

from __future__ import annotations

import math

import numpy as np

from .uld_reference import _reduce, ce_row, softmax_row


def hybrid_row(
    student: np.ndarray, teacher: np.ndarray, shared: list[tuple[int, int]], temperature: float
) -> float:
    p, q = softmax_row(student, temperature), softmax_row(teacher, temperature)
    value = 0.0
    if shared:
        p_mass = math.fsum(p[s] for s, _ in shared)
        q_mass = math.fsum(q[t] for _, t in shared)
        value += temperature**2 * math.fsum(
            (q[t] / q_mass) * math.log((q[t] / q_mass) / (p[s] / p_mass))
            for s, t in shared
            if q[t] > 0
        )
    student_shared = {s for s, _ in shared}
    teacher_shared = {t for _, t in shared}
    p_rest = sorted((p[i] for i in range(len(p)) if i not in student_shared), reverse=True)
    q_rest = sorted((q[j] for j in range(len(q)) if j not in teacher_shared), reverse=True)
    width = max(len(p_rest), len(q_rest))
    p_rest += [0.0] * (width - len(p_rest))
    q_rest += [0.0] * (width - len(q_rest))
    return value + math.fsum(abs(a - b) for a, b in zip(p_rest, q_rest, strict=True))


def hybrid_uld_reference(
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    shared_ids: list[list[int]],
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    num_items_in_batch: float | None = None,
) -> float:
    """Per row the hybrid + w CE (T = 1); rows labelled ``ignore_index`` left out."""
    shared = [(int(s), int(t)) for s, t in np.asarray(shared_ids).reshape(-1, 2)]
    students = list(student_logits.reshape(-1, student_logits.shape[-1]))
    teachers = list(teacher_logits.reshape(-1, teacher_logits.shape[-1]))
    label_rows = [None] * len(students) if labels is None else list(labels.reshape(-1))
    values = []
    for student, teacher, label in zip(students, teachers, label_rows, strict=True):
        if label is not None and label == ignore_index:
            continue
        value = hybrid_row(student, teacher, shared, temperature)
        if hard_label_weight > 0:
            value += hard_label_weight * ce_row(student, int(label))
        values.append(value)
    return _reduce(values, reduction, num_items_in_batch)
