"""Token-level distillation from hidden states: fused, chunked losses that never build the
``[tokens x vocabulary]`` logit matrices.

A language model's logits are ``h W^T (+ b)`` for its last hidden states ``h`` and output
projection ``W`` (``lm_head.weight``). :func:`fused_linear_kd_loss` takes ``h`` and ``W`` of the
student (and of the teacher, or the teacher's logits: dense, sparse :class:`TopKLogits` or
sampled :class:`SampledLogits`)
and computes the loss a chunk of rows at a time, with closed-form gradients accumulated in
float32 during the forward pass (see :mod:`torchkd.losses._fused_kernel`). Peak extra memory is
a few ``[chunk, V]`` buffers plus the gradient of ``W``, instead of several ``[N, V]`` matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from torchkd.losses._common import check_labels, check_mask, compute_dtype, unresolved_divergences
from torchkd.losses._fused_kernel import INPUT_NAMES, Plan, Side, fused_loss, run
from torchkd.losses._module import keyword_options
from torchkd.losses.divergence_table import DIVERGENCES
from torchkd.losses.fused_options import (
    PER_CALL,
    HiddenStatesLoss,
    check_options,
    check_projection,
    check_teacher,
    default_chunk_size,
    loss_denominator,
)
from torchkd.losses.registry import register
from torchkd.losses.sampled import UNBIASED, SampledLogits, SampledRows
from torchkd.losses.topk import TopKLogits, teacher_buckets

__all__ = ["FusedLinearKDLoss", "SampledLogits", "TopKLogits", "fused_linear_kd_loss"]


def _wide(side: Side | None) -> Side | None:
    """``side`` with its weight and bias in float64 (the kernel computes in the weight's dtype)."""
    if side is None:
        return None
    bias = None if side.bias is None else side.bias.double()
    return replace(side, weight=side.weight.double(), bias=bias)


def _rows(tensor: Tensor, index: Tensor | None, per_token: bool = False) -> Tensor:
    """The selected rows of ``[..., D]`` as ``[n, D]`` (``per_token``: of ``[...]`` as ``[n]``)."""
    flat = tensor.reshape(-1) if per_token else tensor.reshape(-1, tensor.shape[-1])
    return flat if index is None else flat[index]


def _unresolved(plan: Plan, loss: Tensor, valid_rows: int, vocab: int) -> bool:
    """Whether the mean divergence row (before ``T^2``) is one float32 cannot resolve.

    The dense losses' rule (:func:`torchkd.losses._common.unresolved_divergences`) applied to
    the mean row: at large temperatures ``z / T`` of student and teacher differ by little and
    the ``T^2``-scaled rounding of the log-normalizers (``T^2 eps log V``) is no longer small
    next to the value; the loss is then recomputed in float64. TVD has no ``T^2`` rounding.
    """
    if not DIVERGENCES[plan.divergence].temperature_squared or valid_rows == 0:
        return False
    mean_row = loss.detach().reshape(1) * plan.denominator / valid_rows / plan.divergence_weight
    weight = plan.divergence_weight / plan.temperature**2
    return bool(unresolved_divergences(mean_row, vocab, plan.temperature, weight).any())


def _sparse_rows(
    sparse: TopKLogits | SampledLogits,
    index: Tensor | None,
    dtype: torch.dtype,
    divergence: str,
    vocab: int,
) -> tuple[Tensor, Tensor] | SampledRows:
    """The kernel's form of a sparse teacher's selected rows: (ids, bucket log-masses) of a
    top-k teacher, :class:`SampledRows` (ids, :math:`\\hat q`, entropy) of a sampled one."""
    if isinstance(sparse, SampledLogits):
        if divergence not in UNBIASED:
            raise ValueError(
                f"divergence must be one of {UNBIASED} with a SampledLogits teacher_logits (its "
                f"estimate is unbiased only for forward KL, linear in q), got {divergence!r}"
            )
        ids, weights = sparse.estimate(dtype)
        entropy = _rows(sparse.entropy, index, True).to(dtype)
        return SampledRows(_rows(ids, index), _rows(weights, index), entropy)
    tail = None if sparse.tail_log_mass is None else _rows(sparse.tail_log_mass, index, True)
    log_masses = teacher_buckets(_rows(sparse.log_probs, index).to(dtype), tail)
    every_token_kept = sparse.token_ids.shape[-1] == vocab
    if every_token_kept:  # no token is outside: both tails are empty (not rounding residue)
        log_masses[:, -1] = float("-inf")
    no_tail = bool((log_masses[:, -1] == float("-inf")).any())
    if divergence in ("reverse_kl", "akl") and no_tail and not every_token_kept:
        raise ValueError(
            f"divergence={divergence!r} with a top-k teacher needs a positive tail mass in "
            "every row (KL(p || q) is infinite where q puts 0 on tokens the student may "
            "emit), unless k equals the vocabulary (then the student's tail is empty too); "
            "skew_reverse_kl stays finite"
        )
    return _rows(sparse.token_ids, index), log_masses


def fused_linear_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    teacher_logits: Tensor | TopKLogits | SampledLogits | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    temperature_squared: bool = True,
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
    truncate_vocab: bool = False,
    skew_lambda: float = 0.1,
    akl_mu: float = 0.5,
) -> Tensor:
    """Token-level distillation loss from the student's hidden states and output projection.

    Per token, with :math:`z_S = s_S (h_S W_S^\\top + b_S)` passed through the optional softcap
    :math:`c \\tanh(z / c)`, :math:`p = \\mathrm{softmax}(z_S / T)` and the teacher's
    :math:`q` likewise (or from given logits),

    .. math::
        \\ell = \\frac{1}{D} \\sum_{i \\,\\text{valid}} \\Big[ \\lambda \\, \\mathcal{D}(q_i, p_i)
        + w \\, \\mathrm{CE}(z_{S,i}, y_i) \\Big], \\qquad \\lambda = T^2

    with :math:`\\mathcal{D}` forward KL :math:`\\mathrm{KL}(q \\| p)` (Hinton et al., 2015),
    reverse KL :math:`\\mathrm{KL}(p \\| q)`, the generalized JSD(β)
    :math:`\\beta \\mathrm{KL}(q \\| m) + (1-\\beta) \\mathrm{KL}(p \\| m)`,
    :math:`m = \\beta q + (1-\\beta) p` (Agarwal et al., "On-Policy Distillation of Language
    Models", ICLR 2024; β = 0 / 1 are forward / reverse KL as in :func:`jsd_loss`), TVD
    :math:`\\tfrac12 \\sum |q - p|`, the skew KLs :math:`\\mathrm{KL}(q \\| \\lambda q +
    (1-\\lambda) p)` and :math:`\\mathrm{KL}(p \\| \\lambda p + (1-\\lambda) q)` (DistiLLM, Ko et
    al., ICML 2024; :func:`skew_forward_kl_loss`, λ = 0 is the plain KL) or adaptive KL
    :math:`w_\\text{head} \\mathrm{KL}(q \\| p) + w_\\text{tail} \\mathrm{KL}(p \\| q)` with
    constant per-token weights from the teacher's head of mass μ (AKL, Wu et al., COLING 2025;
    :func:`akl_loss`). The :math:`T^2` factor is the one :func:`kd_loss` applies
    (it keeps the gradient's size independent of T); ``temperature_squared=False`` drops it, for
    parity with libraries that omit it (Liger-Kernel's fused losses, TRL's GKD loss), and TVD
    never has it (as :func:`tvd_loss`). The hard-label cross-entropy uses the same student
    logits at T = 1; its weight defaults to 0 (Liger blends 0.5 / 0.5). Liger zero-pads a
    smaller student vocabulary where ``truncate_vocab`` truncates (docs/token_kd.md,
    "Conventions").

    Valid tokens are those in ``mask`` whose label is not ``ignore_index``; they alone enter
    every term. ``D`` is their number (``"batchmean"``), or ``num_items_in_batch`` when given:
    pass the valid-token count of the whole batch (all micro-batches and ranks) and summing the
    micro-batch losses gives exactly the gradient of the one large batch. ``"sum"``: ``D = 1``.
    No valid token: the loss is exactly 0 with zero gradients.

    Rows are processed ``chunk_size`` at a time (default :func:`default_chunk_size`); per chunk
    the gradients w.r.t. every input that requires grad (hidden states, weight, bias, of both
    sides when the teacher is given by hidden states) are accumulated in float32 (float64 for
    float64 inputs); the backward pass only scales them. Half-precision inputs are computed in
    float32 (the output weight is upcast once) and the loss is float32; a float64 input on
    either side (a float64 teacher) promotes the computation to float64. Where the logits
    overflow the compute dtype (hidden states and weights near its largest values) the loss is
    redone in float64: the result is the float64 value, or ``inf`` where that is out of range.
    So is a loss float32 cannot resolve (large temperatures: the dense losses' precision rule
    applied to the mean row, see ``_unresolved``).
    Hyperparameters are checked as in every loss: a wrong type is a ``TypeError``, a value out
    of range (NaN and infinities included) a ``ValueError``, both naming the argument.

    Args:
        student_hidden: ``[..., Hs]`` the student's last hidden states (leading dims flattened).
        student_weight: ``[V, Hs]`` the student's output projection (``lm_head.weight``).
        teacher_hidden: ``[..., Ht]`` the teacher's last hidden states (``Ht`` may differ).
        teacher_weight: ``[V', Ht]`` the teacher's output projection.
        labels: ``[...]`` next-token ids (already shifted) or ``ignore_index``; needed for
            ``hard_label_weight > 0``, otherwise only used to leave out ignored tokens.
        teacher_logits: instead of teacher hidden states: dense ``[..., V']`` logits (``-inf``
            allowed for masked vocabulary entries), or a :class:`TopKLogits` (bucket math in
            :mod:`torchkd.losses.topk`; its log-probabilities are taken as the teacher's
            distribution at ``temperature``, only the student is softened), or a
            :class:`SampledLogits` (forward KL only: the unbiased estimate of
            :mod:`torchkd.losses.sampled`, drawn at ``temperature``).
        student_bias: ``[V]`` optional output bias of the student.
        teacher_bias: ``[V']`` optional output bias of the teacher.
        divergence: ``"forward_kl"``, ``"reverse_kl"``, ``"jsd"``, ``"tvd"``,
            ``"skew_forward_kl"``, ``"skew_reverse_kl"`` or ``"akl"``.
        beta: the JSD mixture weight in ``[0, 1]``.
        temperature: :math:`T > 0`, a float.
        temperature_squared: multiply the divergence by :math:`T^2` (default, as ``kd_loss``).
        hard_label_weight: weight :math:`w \\ge 0` of the hard-label cross-entropy.
        ignore_index: label value of tokens to leave out of every term.
        mask: bool ``[...]``: tokens to include.
        num_items_in_batch: the normalizer ``D`` (global valid-token count) for ``"batchmean"``.
        reduction: ``"batchmean"`` (default) or ``"sum"``.
        chunk_size: rows per chunk; None picks :func:`default_chunk_size` of ``V``.
        student_logit_scale: factor :math:`s_S` applied to the student's logits.
        teacher_logit_scale: factor applied to the teacher's logits (from hidden states).
        student_softcap: final-logit softcap :math:`c` of the student (e.g. Gemma 2: 30).
        teacher_softcap: final-logit softcap of the teacher (from hidden states).
        truncate_vocab: compare the first ``min(V, V')`` entries when the sizes differ
            (otherwise a size mismatch is an error).
        skew_lambda: the skew KLs' mixture weight λ in ``[0, 1)`` (DistiLLM's 0.1).
        akl_mu: AKL's head mass μ in ``[0, 1]`` (the paper's 0.5).

    Returns:
        The loss, a 0-dim tensor (float32 for half-precision inputs).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> hidden, weight = torch.randn(2, 3, 8), torch.randn(50, 8)
        >>> loss = fused_linear_kd_loss(
        ...     hidden, weight, hidden, weight, temperature=2.0, chunk_size=4)
        >>> loss.item()
        0.0
    """
    check_options(locals())  # the arguments by name
    check_projection("student", student_hidden, student_weight, student_bias)
    rows_shape = student_hidden.shape[:-1]
    dense, sparse, vocab = check_teacher(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        teacher_bias,
        teacher_logits,
        teacher_logit_scale=teacher_logit_scale,
        teacher_softcap=teacher_softcap,
        truncate_vocab=truncate_vocab,
    )
    check_mask(mask, rows_shape)
    if labels is not None:
        labels = check_labels(labels, student_hidden.new_empty((*rows_shape, vocab)), ignore_index)
    elif hard_label_weight > 0:
        raise ValueError("hard_label_weight > 0 needs labels")
    if beta == 0 and divergence == "jsd":
        divergence = "forward_kl"
    elif beta == 1 and divergence == "jsd":
        divergence = "reverse_kl"
    elif skew_lambda == 0 and divergence.startswith("skew_"):
        divergence = divergence.removeprefix("skew_")
    # the table entry's one parameter: JSD's beta, the skew KLs' lambda, AKL's mu
    own = {"skew_forward_kl": skew_lambda, "skew_reverse_kl": skew_lambda, "akl": akl_mu}
    parameter = own.get(divergence, beta)

    valid = None if mask is None else mask.reshape(-1)
    if labels is not None:
        kept = labels.reshape(-1) != ignore_index
        valid = kept if valid is None else valid & kept
    index = None if valid is None or bool(valid.all()) else valid.nonzero().squeeze(-1)
    total_rows = rows_shape.numel()
    valid_rows = total_rows if index is None else index.numel()
    denominator = loss_denominator(reduction, num_items_in_batch, valid_rows)

    tensors = [
        student_hidden,
        student_weight,
        student_bias,
        teacher_hidden,
        teacher_weight,
        teacher_bias,
        dense,
    ]
    sparse_values = []
    if isinstance(sparse, TopKLogits):
        sparse_values = [sparse.log_probs, sparse.tail_log_mass]
    elif sparse is not None:
        sparse_values = [sparse.entropy]
        if sparse.head is not None:
            sparse_values += [sparse.head.log_probs, sparse.head.tail_log_mass]
    dtype = compute_dtype(*(t for t in [*tensors, *sparse_values] if t is not None))

    def side(
        hidden: Tensor, weight: Tensor, bias: Tensor | None, scale: float, cap: float | None
    ) -> Side:
        bias = None if bias is None else bias[:vocab].to(dtype)
        return Side(_rows(hidden, index), weight[:vocab].to(dtype), bias, scale, cap)

    student = side(
        student_hidden, student_weight, student_bias, student_logit_scale, student_softcap
    )
    teacher = None
    if teacher_hidden is not None:
        teacher = side(
            teacher_hidden, teacher_weight, teacher_bias, teacher_logit_scale, teacher_softcap
        )
    buckets = None if sparse is None else _sparse_rows(sparse, index, dtype, divergence, vocab)
    squared = temperature_squared and DIVERGENCES[divergence].temperature_squared
    plan = Plan(
        divergence=divergence,
        parameter=float(parameter),
        temperature=float(temperature),
        divergence_weight=temperature**2 if squared else 1.0,
        hard_label_weight=float(hard_label_weight),
        denominator=denominator,
        chunk_size=chunk_size or default_chunk_size(vocab, dtype),
        student_scale=float(student_logit_scale),
        student_softcap=student_softcap,
        teacher_scale=float(teacher_logit_scale),
        teacher_softcap=teacher_softcap,
    )
    selected_labels = None if labels is None else _rows(labels, index, True)
    teacher_rows = None if dense is None else dense.reshape(-1, dense.shape[-1])
    originals = dict(zip(INPUT_NAMES, tensors[:6], strict=True))

    def finish(name: str, gradient: Tensor) -> Tensor:
        original = originals[name]
        if name.endswith("hidden"):
            if index is not None:
                full = gradient.new_zeros((total_rows, gradient.shape[-1]))
                gradient = full.index_copy_(0, index, gradient)
            gradient = gradient.reshape(original.shape)
        elif gradient.shape[0] != original.shape[0]:  # truncated vocabulary
            full = gradient.new_zeros(original.shape)
            full[: gradient.shape[0]] = gradient
            gradient = full
        return gradient.to(original.dtype)

    def compute(wanted: set[str]) -> tuple[Tensor, dict[str, Tensor], Callable]:
        teacher_side = teacher if teacher_rows is None else (teacher_rows, index)
        loss, grads = run(plan, student, teacher_side, buckets, selected_labels, wanted)
        if dtype == torch.float64 or loss.device.type == "mps":
            return loss, grads, finish
        if bool(torch.isfinite(loss)) and not _unresolved(plan, loss, valid_rows, vocab):
            return loss, grads, finish
        # Logits beyond the compute dtype's range (hidden states and weights near its largest
        # values): redo in float64, which gives the true value, or inf where that is too large;
        # likewise a divergence float32 cannot resolve (large temperatures, see _unresolved).
        teacher_side = _wide(teacher) if teacher_rows is None else (teacher_rows.double(), index)
        wide_buckets = buckets
        if isinstance(buckets, SampledRows):
            wide_buckets = SampledRows(
                buckets.ids, buckets.weights.double(), buckets.entropy.double()
            )
        elif buckets is not None:
            wide_buckets = (buckets[0], buckets[1].double())
        loss, grads = run(plan, _wide(student), teacher_side, wide_buckets, selected_labels, wanted)
        return loss.to(dtype), {key: grad.to(dtype) for key, grad in grads.items()}, finish

    return fused_loss(tensors[:6], compute)


@register(
    "fused_linear_kd",
    functional=fused_linear_kd_loss,
    signature="hidden_states",
    family="token",
)
class FusedLinearKDLoss(HiddenStatesLoss):
    """Module form of :func:`fused_linear_kd_loss`; stores the hyperparameters.

    Its options are the functional's (``FusedLinearKDLoss.options``: names, defaults and
    order), checked by the functional's check.

    A call may override the stored ``temperature`` (a float: a scheduled temperature) and the
    logit scales and softcaps (the models' own, as the Distiller passes them); ``None`` keeps
    the stored value.

    Example:
        >>> FusedLinearKDLoss(divergence="jsd", temperature=2.0)  # doctest: +ELLIPSIS
        FusedLinearKDLoss(divergence='jsd', beta=0.5, temperature=2.0, ...)
    """

    functional = staticmethod(fused_linear_kd_loss)
    options = keyword_options(fused_linear_kd_loss, PER_CALL)
    check_options = staticmethod(check_options)
