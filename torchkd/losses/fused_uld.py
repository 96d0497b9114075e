"""ULD (:mod:`torchkd.losses.uld`, Boizard et al., TMLR 2025) fused with the output
projections: :func:`fused_linear_uld_loss` takes each model's last hidden states and output
weight and computes the logits, the sorted probabilities and the gradients a chunk of rows at a
time, never the ``[tokens x V]`` logit matrices of both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses._common import compute_dtype
from torchkd.losses._fused_kernel import INPUT_NAMES, fused_loss
from torchkd.losses._module import keyword_options
from torchkd.losses.fused_options import (
    PER_CALL,
    HiddenStatesLoss,
    check_projection,
    default_chunk_size,
    loss_denominator,
)
from torchkd.losses.registry import register
from torchkd.losses.topk import TopKLogits
from torchkd.losses.uld import (
    check_uld_options,
    uld_prob_row_values,
    uld_row_values,
    uld_valid_rows,
)
from torchkd.losses.uld_topk import check_topk_teacher, topk_sorted_probs

__all__ = ["FusedLinearULDLoss", "fused_linear_uld_loss"]


def _projected(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float, softcap: float | None
) -> Tensor:
    """One side's logits :math:`c \\tanh(s (h W^\\top + b) / c)` (softcap ``c`` optional)."""
    logits = F.linear(hidden, weight, bias)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def fused_linear_uld_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    teacher_logits: TopKLogits | None = None,
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    teacher_vocab_size: int | None = None,
) -> Tensor:
    """ULD (formula: :mod:`torchkd.losses.uld`) from each model's last hidden states and
    output projection, or from the student's and a cached top-k teacher.

    Each side's logits are :math:`z = s (h W^\\top + b)`, through the optional softcap
    :math:`c \\tanh(z / c)`; the value is :func:`~torchkd.losses.uld.uld_loss`'s on them (same
    valid rows, normalizer ``D`` and reductions), computed ``chunk_size`` rows at a time.

    With ``teacher_logits`` (a cached teacher, :class:`~torchkd.losses.TopKLogits` at the
    loss's temperature) instead of the teacher's hidden states, the teacher's sorted
    probabilities are its ``k`` kept ones followed by the tail mass :math:`m` spread evenly
    over the other ``V_T - k`` entries (``teacher_vocab_size``), each :math:`m / (V_T - k)`:
    an approximation, exact when ``k >= V_T - 1`` or :math:`m = 0`
    (:mod:`torchkd.losses.uld_topk`).

    Memory: per chunk the logits, softmax and sorted probabilities of both sides are built and
    differentiated at once (``torch.autograd.grad`` of the chunk's sum, in the forward pass);
    the gradients w.r.t. the hidden rows, weights and biases that require grad are accumulated
    and the backward pass only scales them. The peak is a few ``[chunk, V_S + V_T]`` buffers
    (logits, probabilities, sorted values and their int64 sort indices) plus the weights'
    gradients, never ``[N, V]``. Default chunk: :func:`default_chunk_size` of
    ``max(V_S, V_T)`` for 8 such buffers. Half-precision inputs are computed in float32 (the
    weights are upcast once); a float64 input promotes the computation to float64. Where the
    logits overflow the compute dtype the loss is redone in float64 (the result is that value,
    or ``inf`` where it is out of range); :func:`~torchkd.losses.uld.uld_loss` likewise redoes
    such rows.

    Args:
        student_hidden: ``[..., Hs]`` the student's last hidden states.
        student_weight: ``[V_S, Hs]`` the student's output projection.
        teacher_hidden: ``[..., Ht]`` the teacher's last hidden states (the same tokens);
            None with ``teacher_logits``.
        teacher_weight: ``[V_T, Ht]`` the teacher's output projection (``V_T`` may differ).
        labels: ``[...]`` student next-token ids (already shifted) or ``ignore_index``.
        student_bias: ``[V_S]`` optional output bias of the student.
        teacher_bias: ``[V_T]`` optional output bias of the teacher.
        teacher_logits: a cached top-k teacher, :class:`~torchkd.losses.TopKLogits` of the
            rows ``[..., k]``, instead of ``teacher_hidden`` and ``teacher_weight``; a sampled
            one (:class:`~torchkd.losses.SampledLogits`) is refused (ULD is not linear in the
            teacher's probabilities: its sampled estimate would be biased).
        temperature, hard_label_weight, ignore_index, mask, num_items_in_batch, reduction:
            as in :func:`~torchkd.losses.uld.uld_loss`.
        chunk_size: rows per chunk; None picks :func:`default_chunk_size`.
        student_logit_scale: factor :math:`s` of the student's logits.
        teacher_logit_scale: factor of the teacher's logits.
        student_softcap: final-logit softcap :math:`c` of the student.
        teacher_softcap: final-logit softcap of the teacher.
        teacher_vocab_size: ``V_T``, the cached teacher's vocabulary size (needed with
            ``teacher_logits``; the cache manifest's ``vocab_size``).

    Returns:
        The loss, a 0-dim tensor (float32 for half-precision inputs).

    Example:
        >>> from torchkd.losses import uld_loss
        >>> _ = torch.manual_seed(0)
        >>> hidden = torch.randn(2, 3, 8)
        >>> small, large = torch.randn(50, 8), torch.randn(70, 8)
        >>> fused = fused_linear_uld_loss(hidden, small, hidden, large, chunk_size=4)
        >>> dense = uld_loss(hidden @ small.T, hidden @ large.T)
        >>> torch.allclose(fused, dense)
        True
    """
    check_uld_options(locals())
    check_projection("student", student_hidden, student_weight, student_bias)
    rows_shape = student_hidden.shape[:-1]
    cached = teacher_logits is not None
    if cached:
        if teacher_hidden is not None or teacher_weight is not None:
            raise ValueError(
                "give the teacher either as teacher_hidden and teacher_weight or as "
                "teacher_logits (a cached teacher), not both"
            )
        check_topk_teacher(teacher_logits, teacher_vocab_size, rows_shape)
        teacher_classes = int(teacher_vocab_size)
    elif teacher_hidden is None or teacher_weight is None:
        raise ValueError("the teacher is missing: give teacher_hidden and teacher_weight")
    else:
        check_projection("teacher", teacher_hidden, teacher_weight, teacher_bias)
        teacher_classes = teacher_weight.shape[0]
    if not cached and teacher_hidden.shape[:-1] != rows_shape:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
            f"{tuple(teacher_hidden.shape)} must have the same tokens (all dims but the last)"
        )
    labels, valid = uld_valid_rows(
        rows_shape, student_weight.shape[0], labels, mask, ignore_index, hard_label_weight
    )
    index = None if valid is None or bool(valid.all()) else valid.nonzero().squeeze(-1)
    total_rows = rows_shape.numel()
    valid_rows = total_rows if index is None else index.numel()
    denominator = loss_denominator(reduction, num_items_in_batch, valid_rows)
    inputs = (
        student_hidden,
        student_weight,
        student_bias,
        teacher_hidden,
        teacher_weight,
        teacher_bias,
    )
    dtype = compute_dtype(*(t for t in inputs if t is not None))
    chunk = chunk_size or default_chunk_size(
        max(student_weight.shape[0], teacher_classes), dtype, buffers=8
    )

    def rows(tensor: Tensor, per_token: bool = False) -> Tensor:
        flat = tensor.reshape(-1) if per_token else tensor.reshape(-1, tensor.shape[-1])
        return flat if index is None else flat[index]

    hidden_rows = {"student_hidden": rows(student_hidden)}
    if cached:
        tail = teacher_logits.tail_log_mass
        cached_rows = (
            rows(teacher_logits.log_probs),
            None if tail is None else rows(tail, per_token=True),
        )
    else:
        hidden_rows["teacher_hidden"] = rows(teacher_hidden)
    selected = None if labels is None else rows(labels, per_token=True)
    originals = dict(zip(INPUT_NAMES, inputs, strict=True))

    def run(work: torch.dtype, wanted: set[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and the wanted gradients, computed chunk by chunk in dtype ``work``."""
        # detached leaves: the whole weights and biases, and per chunk the hidden rows
        leaves = {
            name: tensor.detach().to(work).requires_grad_(name in wanted)
            for name, tensor in originals.items()
            if tensor is not None and not name.endswith("hidden")
        }
        grads = {name: torch.zeros_like(leaves[name]) for name in leaves if name in wanted}
        for name in hidden_rows:
            if name in wanted:
                grads[name] = hidden_rows[name].new_zeros(hidden_rows[name].shape, dtype=work)
        total = torch.zeros((), dtype=work, device=student_hidden.device)
        for start in range(0, valid_rows, chunk):
            end = min(start + chunk, valid_rows)
            with torch.enable_grad():
                chunk_hidden = {
                    name: hidden[start:end].detach().to(work).requires_grad_(name in wanted)
                    for name, hidden in hidden_rows.items()
                }
                student_logits = _projected(
                    chunk_hidden["student_hidden"],
                    leaves["student_weight"],
                    leaves.get("student_bias"),
                    student_logit_scale,
                    student_softcap,
                )
                chunk_labels = None if selected is None else selected[start:end]
                if cached:
                    log_probs, tail = (None if t is None else t[start:end] for t in cached_rows)
                    teacher_probs = topk_sorted_probs(
                        log_probs.to(work), None if tail is None else tail.to(work), teacher_classes
                    )
                    values = uld_prob_row_values(
                        student_logits, teacher_probs, chunk_labels, temperature, hard_label_weight
                    )
                else:
                    teacher_logits_chunk = _projected(
                        chunk_hidden["teacher_hidden"],
                        leaves["teacher_weight"],
                        leaves.get("teacher_bias"),
                        teacher_logit_scale,
                        teacher_softcap,
                    )
                    values = uld_row_values(
                        student_logits,
                        teacher_logits_chunk,
                        chunk_labels,
                        temperature,
                        hard_label_weight,
                    )
                value = values.sum()
            targets = {**leaves, **chunk_hidden}
            names = [name for name in grads if targets[name].requires_grad]
            if names:
                parts = torch.autograd.grad(value, [targets[name] for name in names])
                for name, part in zip(names, parts, strict=True):
                    if name.endswith("hidden"):
                        grads[name][start:end] = part
                    else:
                        grads[name] += part
            total += value.detach()
        for gradient in grads.values():
            gradient /= denominator
        return total / denominator, grads

    def compute(wanted: set[str]) -> tuple[Tensor, dict[str, Tensor], Callable]:
        loss, grads = run(dtype, wanted)
        if bool(torch.isfinite(loss)) or dtype == torch.float64 or loss.device.type == "mps":
            return loss, grads, finish
        # logits beyond the compute dtype's range (hidden states and weights near its largest
        # values): redo in float64, which gives the true value, or inf where that is too large
        loss, grads = run(torch.float64, wanted)
        return loss.to(dtype), {name: grad.to(dtype) for name, grad in grads.items()}, finish

    def finish(name: str, gradient: Tensor) -> Tensor:
        original = originals[name]
        if name.endswith("hidden"):
            if index is not None:
                full = gradient.new_zeros((total_rows, gradient.shape[-1]))
                gradient = full.index_copy_(0, index, gradient)
            gradient = gradient.reshape(original.shape)
        return gradient.to(original.dtype)

    return fused_loss(inputs, compute)


@register(
    "fused_linear_uld",
    functional=fused_linear_uld_loss,
    signature="hidden_states",
    family="token",
    compares_shapes=True,
)
class FusedLinearULDLoss(HiddenStatesLoss):
    """Module form of :func:`fused_linear_uld_loss`; stores the options
    (``FusedLinearULDLoss.options``).

    A call may override the stored ``temperature`` and the logit scales and softcaps (the
    models' own, as the Distiller passes them); ``None`` keeps the stored value.

    Example:
        >>> FusedLinearULDLoss(temperature=2.0, chunk_size=128)  # doctest: +ELLIPSIS
        FusedLinearULDLoss(temperature=2.0, hard_label_weight=0.0, ..., chunk_size=128, ...)
    """

    functional = staticmethod(fused_linear_uld_loss)
    options = keyword_options(fused_linear_uld_loss, PER_CALL)
    check_options = staticmethod(check_uld_options)
