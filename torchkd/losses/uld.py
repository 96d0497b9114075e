"""The Universal Logit Distillation loss (ULD) for a teacher and a student whose vocabularies
differ: it compares the two distributions' sorted probabilities, so it needs no mapping
between the vocabularies.

Boizard et al., "Towards Cross-Tokenizer Distillation: the Universal Logit Distillation Loss
for LLMs", TMLR 2025. Per token, with :math:`p = \\mathrm{softmax}(z_S / T)` over the
student's :math:`V_S` entries and :math:`q = \\mathrm{softmax}(z_T / T)` over the teacher's
:math:`V_T`, each sorted in descending order (:math:`p_{(1)} \\ge p_{(2)} \\ge \\dots`) and the
shorter one padded with zeros to :math:`V = \\max(V_S, V_T)`,

.. math::
    \\mathrm{ULD}(p, q) = \\sum_{i=1}^{V} \\big| p_{(i)} - q_{(i)} \\big|,

the closed form of the paper's Wasserstein-1 distance between the sorted vectors. The loss is

.. math::
    \\ell = \\frac{1}{D} \\sum_{t \\,\\text{valid}} \\Big[ \\mathrm{ULD}(p_t, q_t)
    + w \\, \\mathrm{CE}(z_{S,t}, y_t) \\Big]

with the hard-label cross-entropy at T = 1 and :math:`w` = ``hard_label_weight`` (default 0).
The paper trains :math:`\\mathrm{CE} + \\lambda \\, \\mathrm{ULD}`: a term weight :math:`\\lambda`
with ``hard_label_weight = 1 / λ`` (or a separate ``ce`` term). Like TVD, the distance has no
:math:`T^2` factor.

The gradient w.r.t. the student's logits flows through the sort (a permutation: the gradient of
:math:`|p_{(i)} - q_{(i)}|` goes to the entry that sorted to position i) and the softmax.

:func:`uld_loss` takes dense logits; :func:`fused_linear_uld_loss` takes each model's last
hidden states and output projection and never builds the ``[tokens x V]`` logits beyond one
chunk of rows (see its docstring for the memory).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses._common import (
    check_floating,
    check_labels,
    check_mask,
    check_number,
    check_temperature,
    compute_dtype,
)
from torchkd.losses._fused_kernel import INPUT_NAMES, FusedLinearFunction
from torchkd.losses._module import HyperparameterModule
from torchkd.losses.fused_options import (
    FUSED_REDUCTIONS,
    check_projection,
    default_chunk_size,
    loss_denominator,
)
from torchkd.losses.registry import register

__all__ = ["FusedLinearULDLoss", "ULDLoss", "fused_linear_uld_loss", "uld_loss"]


def uld_rows(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``[n]`` ULD of each row of ``[n, V_S]`` and ``[n, V_T]`` logits (no reduction).

    The zero padding is not built: past the shorter vocabulary ``m`` the sum is the longer
    side's remaining sorted probabilities, :math:`\\sum_{i \\le m} |p_{(i)} - q_{(i)}| +
    \\sum_{i > m} r_{(i)}`.
    """
    p = torch.softmax(student_logits / temperature, dim=-1).sort(dim=-1, descending=True).values
    q = torch.softmax(teacher_logits / temperature, dim=-1).sort(dim=-1, descending=True).values
    shorter = min(p.shape[-1], q.shape[-1])
    longer = p if p.shape[-1] > shorter else q
    distance = (p[:, :shorter] - q[:, :shorter]).abs().sum(dim=-1)
    return distance + longer[:, shorter:].sum(dim=-1)


def _row_total(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float,
    hard_label_weight: float,
) -> Tensor:
    """The sum over rows of ULD plus ``hard_label_weight`` times the student's CE (T = 1)."""
    total = uld_rows(student_logits, teacher_logits, temperature).sum()
    if hard_label_weight > 0:
        ce = F.cross_entropy(student_logits, labels, reduction="sum")
        total = total + hard_label_weight * ce
    return total


def _check_options(options: dict[str, Any]) -> None:
    """The hyperparameters shared by both forms (a ``TypeError``/``ValueError`` naming each)."""
    temperature = options["temperature"]
    if isinstance(temperature, Tensor):
        raise TypeError("temperature must be a float for ULD (a number or a schedule's value)")
    check_temperature(temperature)
    check_number("hard_label_weight", options["hard_label_weight"], minimum=0.0)
    check_number("ignore_index", options["ignore_index"], integer=True)
    if options["reduction"] not in FUSED_REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {FUSED_REDUCTIONS} for ULD, got {options['reduction']!r}"
        )
    if options.get("chunk_size") is not None:
        check_number("chunk_size", options["chunk_size"], minimum=1, integer=True)
    for name in ("student_logit_scale", "teacher_logit_scale"):
        if name in options:
            check_number(name, options[name], minimum=0.0, strict=True)
    for name in ("student_softcap", "teacher_softcap"):
        if options.get(name) is not None:
            check_number(name, options[name], minimum=0.0, strict=True)


def _valid_rows(
    rows_shape: torch.Size,
    vocab: int,
    labels: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    hard_label_weight: float,
) -> tuple[Tensor | None, Tensor | None]:
    """The checked labels (int64, or None) and the flat valid-row selection (None: all rows).

    Valid rows are those in ``mask`` whose label is not ``ignore_index``."""
    check_mask(mask, rows_shape)
    if labels is not None:
        labels = check_labels(
            labels, torch.empty((*rows_shape, vocab), device="meta"), ignore_index
        )
    elif hard_label_weight > 0:
        raise ValueError("hard_label_weight > 0 needs labels")
    valid = None if mask is None else mask.reshape(-1)
    if labels is not None:
        kept = labels.reshape(-1) != ignore_index
        valid = kept if valid is None else valid & kept
    return labels, valid


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 1.0,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    num_items_in_batch: int | Tensor | None = None,
    reduction: str = "batchmean",
) -> Tensor:
    """ULD between dense logits of different vocabulary sizes (formula: the module docstring).

    Valid rows are those in ``mask`` whose label is not ``ignore_index``; ``D`` is their number
    (``"batchmean"``), or ``num_items_in_batch`` when given (the valid-token count of the whole
    batch, as :func:`~torchkd.losses.fused_linear_kd_loss`); ``"sum"``: ``D = 1``. No valid row:
    exactly 0 with zero gradients. Half-precision logits are computed in float32.

    Args:
        student_logits: ``[..., V_S]``.
        teacher_logits: ``[..., V_T]`` (the same leading dims; ``V_T`` may differ from ``V_S``).
        labels: ``[...]`` student token ids or ``ignore_index``; needed for
            ``hard_label_weight > 0``, otherwise only used to leave out ignored rows.
        temperature: :math:`T > 0` applied to both sides (a float).
        hard_label_weight: weight :math:`w \\ge 0` of the student's cross-entropy (T = 1).
        ignore_index: label value of rows to leave out of every term.
        mask: bool ``[...]``: rows to include.
        num_items_in_batch: the normalizer ``D`` for ``"batchmean"``.
        reduction: ``"batchmean"`` (default) or ``"sum"``.

    Returns:
        The loss, a 0-dim tensor.

    Example:
        >>> student = torch.tensor([[2.0, 0.0, 0.0]])
        >>> teacher = torch.tensor([[0.0, float("-inf"), 2.0, 0.0]])  # another vocabulary
        >>> round(uld_loss(student, teacher).item(), 6)  # the same sorted probabilities
        0.0
        >>> round(uld_loss(student, torch.zeros(1, 4)).item(), 4)  # vs uniform over 4
        1.074
    """
    _check_options(locals())
    check_floating("student_logits", student_logits)
    check_floating("teacher_logits", teacher_logits)
    if student_logits.dim() < 1 or student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            "student_logits [..., V_S] and teacher_logits [..., V_T] must have the same rows "
            f"(all dims but the last), got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    rows_shape = student_logits.shape[:-1]
    labels, valid = _valid_rows(
        rows_shape, student_logits.shape[-1], labels, mask, ignore_index, hard_label_weight
    )
    dtype = compute_dtype(student_logits, teacher_logits)

    def rows(tensor: Tensor, per_token: bool = False) -> Tensor:
        flat = tensor.reshape(-1) if per_token else tensor.reshape(-1, tensor.shape[-1])
        return flat if valid is None else flat[valid]

    selected = None if labels is None else rows(labels, per_token=True)
    total = _row_total(
        rows(student_logits).to(dtype),
        rows(teacher_logits).to(dtype),
        selected,
        temperature,
        hard_label_weight,
    )
    valid_rows = rows_shape.numel() if valid is None else int(valid.sum())
    return total / loss_denominator(reduction, num_items_in_batch, valid_rows)


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
    teacher_logits: None = None,
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
) -> Tensor:
    """ULD (module docstring) from each model's last hidden states and output projection.

    Each side's logits are :math:`z = s (h W^\\top + b)`, through the optional softcap
    :math:`c \\tanh(z / c)`; then the value is :func:`uld_loss`'s on them (same valid rows,
    normalizer ``D`` and reductions), computed ``chunk_size`` rows at a time.

    Memory: per chunk the logits, softmax and sorted probabilities of both sides are built and
    differentiated at once (``torch.autograd.grad`` of the chunk's sum, in the forward pass);
    the gradients w.r.t. the hidden rows, weights and biases that require grad are accumulated
    and the backward pass only scales them. The peak is a few ``[chunk, V_S + V_T]`` buffers
    (logits, probabilities, sorted values and their int64 sort indices) plus the weights'
    gradients, never ``[N, V]``. Default chunk: :func:`default_chunk_size` of
    ``max(V_S, V_T)``. Half-precision inputs are computed in float32 (the weights are upcast
    once); a float64 input promotes the computation to float64.

    Args:
        student_hidden: ``[..., Hs]`` the student's last hidden states.
        student_weight: ``[V_S, Hs]`` the student's output projection.
        teacher_hidden: ``[..., Ht]`` the teacher's last hidden states (the same tokens);
            required: None (a cached teacher gives none) is refused, naming what is missing.
        teacher_weight: ``[V_T, Ht]`` the teacher's output projection (``V_T`` may differ).
        labels: ``[...]`` student next-token ids (already shifted) or ``ignore_index``.
        student_bias: ``[V_S]`` optional output bias of the student.
        teacher_bias: ``[V_T]`` optional output bias of the teacher.
        teacher_logits: not supported (a cached top-k teacher lacks the full sorted
            distribution): must be None.
        temperature, hard_label_weight, ignore_index, mask, num_items_in_batch, reduction:
            as in :func:`uld_loss`.
        chunk_size: rows per chunk; None picks :func:`default_chunk_size`.
        student_logit_scale: factor :math:`s` of the student's logits.
        teacher_logit_scale: factor of the teacher's logits.
        student_softcap: final-logit softcap :math:`c` of the student.
        teacher_softcap: final-logit softcap of the teacher.

    Returns:
        The loss, a 0-dim tensor (float32 for half-precision inputs).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> hidden = torch.randn(2, 3, 8)
        >>> small, large = torch.randn(50, 8), torch.randn(70, 8)
        >>> fused = fused_linear_uld_loss(hidden, small, hidden, large, chunk_size=4)
        >>> dense = uld_loss(hidden @ small.T, hidden @ large.T)
        >>> torch.allclose(fused, dense)
        True
    """
    _check_options(locals())
    if teacher_logits is not None:
        raise ValueError(
            "fused_linear_uld_loss needs the teacher's hidden states and output projection: "
            "ULD sorts the teacher's full distribution, which teacher_logits (a cached top-k "
            "teacher, teacher='cache') do not give; use teacher='logits'"
        )
    if teacher_hidden is None or teacher_weight is None:
        raise ValueError("the teacher is missing: give teacher_hidden and teacher_weight")
    check_projection("student", student_hidden, student_weight, student_bias)
    check_projection("teacher", teacher_hidden, teacher_weight, teacher_bias)
    rows_shape = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != rows_shape:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
            f"{tuple(teacher_hidden.shape)} must have the same tokens (all dims but the last)"
        )
    labels, valid = _valid_rows(
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
        max(student_weight.shape[0], teacher_weight.shape[0]), dtype
    )

    def rows(tensor: Tensor, per_token: bool = False) -> Tensor:
        flat = tensor.reshape(-1) if per_token else tensor.reshape(-1, tensor.shape[-1])
        return flat if index is None else flat[index]

    hidden_rows = {"student_hidden": rows(student_hidden), "teacher_hidden": rows(teacher_hidden)}
    selected = None if labels is None else rows(labels, per_token=True)
    originals = dict(zip(INPUT_NAMES, inputs, strict=True))

    def compute(wanted: set[str]) -> tuple[Tensor, dict[str, Tensor], Callable]:
        # detached leaves in the compute dtype: the whole weights, and per chunk the hidden rows
        leaves = {
            name: tensor.detach().to(dtype).requires_grad_(name in wanted)
            for name, tensor in originals.items()
            if tensor is not None and not name.endswith("hidden")
        }
        grads = {name: torch.zeros_like(leaves[name]) for name in leaves if name in wanted}
        for name in ("student_hidden", "teacher_hidden"):
            if name in wanted:
                grads[name] = hidden_rows[name].new_zeros(hidden_rows[name].shape, dtype=dtype)
        total = torch.zeros((), dtype=dtype, device=student_hidden.device)
        for start in range(0, valid_rows, chunk):
            end = min(start + chunk, valid_rows)
            with torch.enable_grad():
                chunk_hidden = {
                    name: hidden[start:end].detach().to(dtype).requires_grad_(name in wanted)
                    for name, hidden in hidden_rows.items()
                }
                value = _row_total(
                    _projected(
                        chunk_hidden["student_hidden"],
                        leaves["student_weight"],
                        leaves.get("student_bias"),
                        student_logit_scale,
                        student_softcap,
                    ),
                    _projected(
                        chunk_hidden["teacher_hidden"],
                        leaves["teacher_weight"],
                        leaves.get("teacher_bias"),
                        teacher_logit_scale,
                        teacher_softcap,
                    ),
                    None if selected is None else selected[start:end],
                    temperature,
                    hard_label_weight,
                )
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
        return total / denominator, grads, finish

    def finish(name: str, gradient: Tensor) -> Tensor:
        original = originals[name]
        if name.endswith("hidden"):
            if index is not None:
                full = gradient.new_zeros((total_rows, gradient.shape[-1]))
                gradient = full.index_copy_(0, index, gradient)
            gradient = gradient.reshape(original.shape)
        return gradient.to(original.dtype)

    needs = any(t is not None and t.requires_grad for t in inputs)
    if not (torch.is_grad_enabled() and needs):
        return compute(set())[0]
    return FusedLinearFunction.apply(*inputs, compute)


class _ULDModule(HyperparameterModule):
    """Stores the hyperparameters (checked as the functional checks them); repr shows them."""

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())


@register(
    "uld", functional=uld_loss, signature="logits_labels", family="logit", compares_shapes=True
)
class ULDLoss(_ULDModule):
    """Module form of :func:`uld_loss`; a call may override the stored ``temperature``.

    Registered with the ``"logits_labels"`` signature and ``compares_shapes``: the Distiller
    passes student and teacher logits of different vocabulary sizes as they are.

    Example:
        >>> ULDLoss(hard_label_weight=0.5)
        ULDLoss(temperature=1.0, hard_label_weight=0.5, ignore_index=-100, reduction='batchmean')
    """

    def __init__(
        self,
        temperature: float = 1.0,
        hard_label_weight: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "batchmean",
    ) -> None:
        super().__init__()
        options = {
            "temperature": temperature,
            "hard_label_weight": hard_label_weight,
            "ignore_index": ignore_index,
            "reduction": reduction,
        }
        _check_options(options)
        self.store(**options)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        temperature: float | None = None,
    ) -> Tensor:
        options = self.hyperparameters(temperature=temperature)
        return uld_loss(
            student_logits,
            teacher_logits,
            labels,
            mask=mask,
            num_items_in_batch=num_items_in_batch,
            **options,
        )


# The fused module's stored options: the functional's keyword options but those given per call.
PER_CALL = ("student_bias", "teacher_bias", "teacher_logits", "mask", "num_items_in_batch")
OPTIONS: tuple[inspect.Parameter, ...] = tuple(
    parameter.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for parameter in inspect.signature(fused_linear_uld_loss).parameters.values()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in PER_CALL
)
_OPTIONS_SIGNATURE = inspect.Signature(OPTIONS)


@register(
    "fused_linear_uld", functional=fused_linear_uld_loss, signature="hidden_states", family="token"
)
class FusedLinearULDLoss(_ULDModule):
    """Module form of :func:`fused_linear_uld_loss`; stores the options (:data:`OPTIONS`).

    A call may override the stored ``temperature`` and the logit scales and softcaps (the
    models' own, as the Distiller passes them); ``None`` keeps the stored value.

    Example:
        >>> FusedLinearULDLoss(temperature=2.0, chunk_size=128)  # doctest: +ELLIPSIS
        FusedLinearULDLoss(temperature=2.0, hard_label_weight=0.0, ..., chunk_size=128, ...)
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__()
        try:
            bound = _OPTIONS_SIGNATURE.bind(*args, **options)
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}: {error}") from None
        bound.apply_defaults()
        _check_options(bound.arguments)
        self.store(**bound.arguments)

    # help() and inspect show the options: (self, temperature=1.0, hard_label_weight=0.0, ...)
    __init__.__signature__ = _OPTIONS_SIGNATURE.replace(  # type: ignore[attr-defined]
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *OPTIONS],
        return_annotation="None",
    )

    def forward(
        self,
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        student_bias: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        teacher_logits: None = None,
        mask: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        temperature: float | None = None,
        student_logit_scale: float | None = None,
        teacher_logit_scale: float | None = None,
        student_softcap: float | None = None,
        teacher_softcap: float | None = None,
    ) -> Tensor:
        options = self.hyperparameters(
            temperature=temperature,
            student_logit_scale=student_logit_scale,
            teacher_logit_scale=teacher_logit_scale,
            student_softcap=student_softcap,
            teacher_softcap=teacher_softcap,
        )
        return fused_linear_uld_loss(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            teacher_logits=teacher_logits,
            mask=mask,
            num_items_in_batch=num_items_in_batch,
            **options,
        )
