"""How far a teacher cache (top-k or sampled) is from the dense teacher it was written from:
the forward-KL loss value (ULD for a teacher with its own tokenizer) and the student's
hidden-state gradient, dense against cached, on a few batches."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from torchkd.batch import to_device
from torchkd.lm import count_valid_tokens, last_hidden_state, output_projection
from torchkd.lm.aligned import TEACHER_INPUTS, TEACHER_POSITIONS, aligned_rows, compared_rows
from torchkd.lm.cache.read import cached_targets
from torchkd.losses import TopKLogits, fused_linear_kd_loss, fused_linear_uld_loss

__all__ = ["measure_cache_error"]


def measure_cache_error(
    teacher: nn.Module,
    student: nn.Module,
    cached: Any,
    *,
    temperature: float,
    batches: int = 4,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    teacher_inputs_key: str = "inputs",
) -> dict[str, float | int]:
    """Loss and gradient error of the cached teacher against the dense one.

    On the first ``batches`` batches of ``cached`` (a
    :class:`~torchkd.lm.cache.TeacherCacheDataset`, in index order) it computes the
    forward-KL :func:`~torchkd.losses.fused_linear_kd_loss` (``reduction="sum"``, at
    ``temperature``) of ``student`` against the dense teacher (its hidden states and output
    projection) and against the cached ``TopKLogits`` or ``SampledLogits``
    (:func:`~torchkd.lm.cache.read.cached_targets`), and the gradients ``g`` of both w.r.t.
    the student's last hidden states:

    .. math::
        e_\\text{loss} = \\frac{|L_\\text{cache} - L_\\text{dense}|}{|L_\\text{dense}|}, \\qquad
        e_\\text{grad} = \\frac{\\lVert g_\\text{cache} - g_\\text{dense} \\rVert}
        {\\lVert g_\\text{dense} \\rVert}

    summed over the tokens of all batches (the teacher reads ``batch[teacher_inputs_key]``,
    the student ``batch["inputs"]``). The errors include the top-k truncation and the
    float16 storage, or the sampling noise of the one draw a sampled cache holds (its bias is
    0: ``benchmarks/cache_quality.py`` measures both).

    A cache of a teacher with its own tokenizer (batches with ``teacher_positions``, the
    cache in the student's layout) is compared by
    :func:`~torchkd.losses.fused_linear_uld_loss` instead, on the aligned rows: the dense
    teacher runs on ``teacher_inputs``, the cached one spreads its tail evenly
    (:mod:`torchkd.losses.uld_topk`).

    Returns:
        ``divergence`` (``"forward_kl"`` or ``"uld"``), ``batches``, ``tokens`` (valid ones),
        ``loss_dense`` and ``loss_cache`` (per token), ``loss_relative_error``,
        ``grad_relative_error`` and ``grad_cosine``.
    """
    device = torch.device(device)
    teacher_projection = output_projection(teacher, "teacher")
    student_projection = output_projection(student, "student")
    student_weight = student_projection.weight.detach()
    student_bias = None if student_projection.bias is None else student_projection.bias.detach()
    common = {
        "temperature": float(temperature),
        "reduction": "sum",
        "student_bias": student_bias,
        "student_logit_scale": student_projection.logit_scale,
        "student_softcap": student_projection.softcap,
    }
    teacher_side = {
        "teacher_bias": teacher_projection.bias,
        "teacher_logit_scale": teacher_projection.logit_scale,
        "teacher_softcap": teacher_projection.softcap,
    }
    totals = dict.fromkeys(("dense", "cache", "difference", "norm", "cache_norm", "dot"), 0.0)
    tokens = 0
    used = 0
    divergence = "forward_kl"
    teacher_mode, student_mode = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        for start in range(0, min(batches * batch_size, len(cached)), batch_size):
            positions = range(start, min(start + batch_size, len(cached)))
            batch = to_device(default_collate([cached[p] for p in positions]), device)
            labels, positions = batch["labels"], batch.get(TEACHER_POSITIONS)
            teacher_inputs = batch[teacher_inputs_key if positions is None else TEACHER_INPUTS]
            with torch.no_grad():
                teacher_hidden = last_hidden_state(teacher, teacher_inputs, "teacher")
                student_hidden = last_hidden_state(student, batch["inputs"], "student")
            student_hidden = student_hidden.detach().requires_grad_(True)
            weights = (student_weight, teacher_projection.weight.detach())
            sparse_teacher = cached_targets(batch)
            if positions is None:
                dense = fused_linear_kd_loss(
                    student_hidden, weights[0], teacher_hidden, weights[1], labels,
                    divergence="forward_kl", **teacher_side, **common,
                )  # fmt: skip
                cache = fused_linear_kd_loss(
                    student_hidden, weights[0], labels=labels, teacher_logits=sparse_teacher,
                    divergence="forward_kl", **common,
                )  # fmt: skip
            else:  # the aligned rows, the cache in the student's layout
                divergence = "uld"
                student_rows, teacher_rows, aligned_labels = aligned_rows(
                    student_hidden, teacher_hidden, labels, positions
                )
                dense = fused_linear_uld_loss(
                    student_rows, weights[0], teacher_rows, weights[1], aligned_labels,
                    **teacher_side, **common,
                )  # fmt: skip
                cached_rows, labels, *parts = compared_rows(
                    positions,
                    student_hidden,
                    labels,
                    sparse_teacher.token_ids,
                    sparse_teacher.log_probs,
                    sparse_teacher.tail_log_mass,
                )
                cache = fused_linear_uld_loss(
                    cached_rows, weights[0], labels=labels, teacher_logits=TopKLogits(*parts),
                    teacher_vocab_size=weights[1].shape[0], **common,
                )  # fmt: skip
            (dense_grad,) = torch.autograd.grad(dense, student_hidden)
            (cache_grad,) = torch.autograd.grad(cache, student_hidden)
            totals["dense"] += float(dense.detach())
            totals["cache"] += float(cache.detach())
            totals["difference"] += float((cache_grad - dense_grad).double().square().sum())
            totals["norm"] += float(dense_grad.double().square().sum())
            totals["cache_norm"] += float(cache_grad.double().square().sum())
            totals["dot"] += float((cache_grad.double() * dense_grad.double()).sum())
            tokens += count_valid_tokens(labels)
            used += 1
    finally:
        teacher.train(teacher_mode)
        student.train(student_mode)
    if tokens == 0 or totals["norm"] == 0.0:
        raise ValueError(
            f"the first {used} batches have no token the loss reads (every label is -100): "
            "nothing to compare"
        )
    return {
        "divergence": divergence,
        "batches": used,
        "tokens": tokens,
        "loss_dense": totals["dense"] / max(tokens, 1),
        "loss_cache": totals["cache"] / max(tokens, 1),
        "loss_relative_error": abs(totals["cache"] - totals["dense"]) / abs(totals["dense"]),
        "grad_relative_error": math.sqrt(totals["difference"] / totals["norm"]),
        "grad_cosine": totals["dot"] / math.sqrt(totals["norm"] * totals["cache_norm"]),
    }
