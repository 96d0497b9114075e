"""The fused loss's arguments: option and input checks, the normalizer and the chunk size.

The checks of :func:`torchkd.losses.fused_linear_kd_loss` and its module beyond the shared
ones of :mod:`torchkd.losses._common`: the hyperparameters (:func:`check_options`), each
side's output layer (:func:`check_projection`), the teacher's form (:func:`check_teacher`) and
the normalizer ``D`` (:func:`loss_denominator`); :func:`default_chunk_size`, the rows the
kernel processes at a time; and :class:`HiddenStatesLoss`, the module form every fused loss
shares (stored options, per-call tensors). A wrong type is a ``TypeError``, a value out of range a
``ValueError``, both naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from torchkd.losses._common import (
    check_floating,
    check_number,
    check_temperature,
    check_unit_interval,
)
from torchkd.losses._module import FunctionalOptionsModule
from torchkd.losses.divergence_table import lookup
from torchkd.losses.sampled import SampledLogits, check_sampled
from torchkd.losses.topk import TopKLogits, check_topk

__all__ = ["default_chunk_size"]

FUSED_REDUCTIONS = ("batchmean", "sum")
CHUNK_BUDGET_BYTES = 2**29  # the [chunk, V] buffers of one chunk together: 512 MiB
MIN_CHUNK_ROWS = 64  # fewer rows make the matrix products several times slower
MAX_CHUNK_ROWS = 1024  # more rows make them no faster (CPU, H = 1024, V = 128,256)


def default_chunk_size(vocab: int, dtype: torch.dtype = torch.float32, buffers: int = 2) -> int:
    """Rows per chunk: as many as let ``buffers`` ``[chunk, V]`` buffers of ``dtype`` fit into
    512 MiB together, rounded down to a multiple of 64, between 64 and 1024 rows.

    The fused KD kernel holds two such buffers (each side's logits; its elementwise work runs
    on a few rows at a time, in buffers of a few MiB): 512 rows at V = 128,256 in float32, 1024
    at V = 32,000 or in bfloat16. The matrix products (the bulk of the time) slow down below
    about 1024 rows and sharply below 256 (``benchmarks/token_kd.py`` compares chunk sizes).
    ``fused_linear_uld_loss`` builds more buffers per chunk (logits, probabilities and sorted
    values of both sides) and asks for 8.

    Example:
        >>> default_chunk_size(32000), default_chunk_size(128256)
        (1024, 512)
        >>> default_chunk_size(128256, buffers=8)
        128
    """
    size = torch.empty((), dtype=dtype).element_size()
    rows = CHUNK_BUDGET_BYTES // (buffers * max(vocab, 1) * size) // MIN_CHUNK_ROWS
    return min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows * MIN_CHUNK_ROWS))


def check_projection(prefix: str, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """One side's output layer: floating ``hidden`` ``[..., H]``, ``weight`` ``[V, H]`` and
    ``bias`` ``[V]`` (or None); ``prefix`` (``"student"``/``"teacher"``) names the arguments."""
    check_floating(f"{prefix}_hidden", hidden)
    check_floating(f"{prefix}_weight", weight)
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(
            f"{prefix}_hidden must be [..., H] and {prefix}_weight [V, H], got "
            f"{tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{prefix}_hidden has hidden size {hidden.shape[-1]} but {prefix}_weight "
            f"{tuple(weight.shape)} expects {weight.shape[1]} ([V, H])"
        )
    if bias is not None:
        check_floating(f"{prefix}_bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(
                f"{prefix}_bias must have shape ({weight.shape[0]},) (one per vocabulary row), "
                f"got {tuple(bias.shape)}"
            )


def check_options(options: Mapping[str, Any]) -> None:
    """Hyperparameter checks (the shared ones of :mod:`torchkd.losses._common`) of the
    functional's options (``FusedLinearKDLoss.options``), given by name (the functional's
    arguments or a module's)."""
    divergence, beta, temperature = options["divergence"], options["beta"], options["temperature"]
    hard_label_weight, reduction = options["hard_label_weight"], options["reduction"]
    chunk_size, ignore_index = options["chunk_size"], options["ignore_index"]
    lookup(divergence, "chunked")  # the chunked form serves sparse targets' buckets alike
    check_unit_interval("beta", beta)
    check_unit_interval("skew_lambda", options["skew_lambda"], include_one=False)
    check_unit_interval("akl_mu", options["akl_mu"])
    if isinstance(temperature, Tensor):
        raise TypeError("temperature must be a float here (the fused loss has no learned T)")
    check_temperature(temperature)
    check_number("hard_label_weight", hard_label_weight, minimum=0.0)
    if reduction not in FUSED_REDUCTIONS:
        raise ValueError(
            f"reduction must be one of {FUSED_REDUCTIONS} for the fused loss (its backward is "
            f"stored per loss, not per row), got {reduction!r}"
        )
    if chunk_size is not None:
        check_number("chunk_size", chunk_size, minimum=1, integer=True)
    check_number("ignore_index", ignore_index, integer=True)
    for name in (
        "student_logit_scale",
        "teacher_logit_scale",
        "student_softcap",
        "teacher_softcap",
    ):
        value = options[name]
        if value is not None:
            check_number(name, value, minimum=0.0, strict=True)


def _vocab(student_vocab: int, teacher_vocab: int, truncate_vocab: bool, what: str) -> int:
    """The vocabulary compared: the common size, or ``min(V, V')`` with ``truncate_vocab``."""
    if student_vocab == teacher_vocab:
        return student_vocab
    if not truncate_vocab:
        raise ValueError(
            f"student has {student_vocab} vocabulary entries, teacher {teacher_vocab} ({what}); "
            "pass truncate_vocab=True to compare the first min(V_student, V_teacher) entries "
            "(padded vocabularies of one model family)"
        )
    return min(student_vocab, teacher_vocab)


def check_teacher(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
    teacher_bias: Tensor | None,
    teacher_logits: Tensor | TopKLogits | SampledLogits | None,
    *,
    teacher_logit_scale: float,
    teacher_softcap: float | None,
    truncate_vocab: bool,
) -> tuple[Tensor | None, TopKLogits | SampledLogits | None, int]:
    """The teacher's form, checked against the student's tokens and vocabulary.

    Returns the dense ``teacher_logits`` (or None), the top-k or sampled ``teacher_logits`` (or
    None; both None: the teacher is given by hidden states and weight) and the vocabulary size
    ``V`` the loss compares (``min(V, V')`` with ``truncate_vocab``).
    """
    rows_shape = student_hidden.shape[:-1]
    dense: Tensor | None = None
    sparse: TopKLogits | SampledLogits | None = None
    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_weight is not None or teacher_bias is not None:
            raise ValueError("give the teacher either as teacher_logits or as hidden + weight")
        if teacher_logit_scale != 1.0 or teacher_softcap is not None:
            raise ValueError(
                "teacher_logit_scale/teacher_softcap apply to logits computed from teacher "
                "hidden states; given teacher_logits must already be final"
            )
        if isinstance(teacher_logits, TopKLogits):
            sparse = teacher_logits
            vocab = student_weight.shape[0]
            check_topk(sparse, rows_shape, vocab)
        elif isinstance(teacher_logits, SampledLogits):
            sparse = teacher_logits
            vocab = student_weight.shape[0]
            check_sampled(sparse, rows_shape, vocab)
        else:
            check_floating("teacher_logits", teacher_logits)
            dense = teacher_logits
            if dense.shape[:-1] != rows_shape:
                raise ValueError(
                    f"teacher_logits must have shape [{', '.join(map(str, rows_shape))}, V] (the "
                    f"student's tokens), got {tuple(dense.shape)}"
                )
            if dense.requires_grad and torch.is_grad_enabled():
                raise ValueError(
                    "teacher_logits require grad, but the fused loss gives given logits none: "
                    "detach them, or pass teacher_hidden + teacher_weight to train the teacher"
                )
            if bool(torch.isnan(dense).any()) or bool((dense == float("inf")).any()):
                raise ValueError("teacher_logits contain NaN or +inf")
            vocab = _vocab(student_weight.shape[0], dense.shape[-1], truncate_vocab, "logits")
    elif teacher_hidden is None or teacher_weight is None:
        raise ValueError(
            "the teacher is missing: give teacher_hidden and teacher_weight, or teacher_logits"
        )
    else:
        check_projection("teacher", teacher_hidden, teacher_weight, teacher_bias)
        if teacher_hidden.shape[:-1] != rows_shape:
            raise ValueError(
                f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden "
                f"{tuple(teacher_hidden.shape)} must have the same tokens (all dims but the last)"
            )
        vocab = _vocab(student_weight.shape[0], teacher_weight.shape[0], truncate_vocab, "weights")
    return dense, sparse, vocab


def loss_denominator(
    reduction: str, num_items_in_batch: int | Tensor | None, valid_rows: int
) -> float:
    """The loss's divisor ``D``: ``num_items_in_batch`` when given (``"batchmean"`` only), else
    the number of valid rows (at least 1) for ``"batchmean"`` and 1 for ``"sum"``."""
    if num_items_in_batch is None:
        return float(max(valid_rows, 1)) if reduction == "batchmean" else 1.0
    if reduction != "batchmean":
        raise ValueError(
            "num_items_in_batch is the batchmean normalizer; use reduction='batchmean'"
        )
    if isinstance(num_items_in_batch, Tensor):
        if num_items_in_batch.numel() != 1 or num_items_in_batch.dtype == torch.bool:
            raise ValueError(
                "num_items_in_batch must be a number or a one-element tensor, got a "
                f"{num_items_in_batch.dtype} tensor of shape {tuple(num_items_in_batch.shape)}"
            )
        num_items_in_batch = num_items_in_batch.item()
    check_number("num_items_in_batch", num_items_in_batch, minimum=0.0, strict=True)
    return float(num_items_in_batch)


# A fused module's stored options: its functional's keyword options but those given per call.
PER_CALL = ("teacher_logits", "student_bias", "teacher_bias", "mask", "num_items_in_batch")


class HiddenStatesLoss(FunctionalOptionsModule):
    """The module form of a loss fused with the output projection (signature
    ``"hidden_states"``): a subclass sets ``functional``, its ``options`` (without
    :data:`PER_CALL`) and ``check_options``; the tensors, the biases, the mask and the token
    count come with each call, as the Distiller passes them."""

    functional: Callable[..., Tensor]

    def forward(
        self,
        student_hidden: Tensor,
        student_weight: Tensor,
        teacher_hidden: Tensor | None = None,
        teacher_weight: Tensor | None = None,
        labels: Tensor | None = None,
        *,
        teacher_logits: Tensor | TopKLogits | SampledLogits | None = None,
        student_bias: Tensor | None = None,
        teacher_bias: Tensor | None = None,
        mask: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        temperature: float | None = None,
        student_logit_scale: float | None = None,
        teacher_logit_scale: float | None = None,
        student_softcap: float | None = None,
        teacher_softcap: float | None = None,
    ) -> Tensor:
        """The functional on these tensors with the stored options; ``temperature`` and the
        logit scales and softcaps replace the stored ones for this call when not None."""
        options = self.hyperparameters(
            temperature=temperature,
            student_logit_scale=student_logit_scale,
            teacher_logit_scale=teacher_logit_scale,
            student_softcap=student_softcap,
            teacher_softcap=teacher_softcap,
        )
        return self.functional(
            student_hidden,
            student_weight,
            teacher_hidden,
            teacher_weight,
            labels,
            teacher_logits=teacher_logits,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            mask=mask,
            num_items_in_batch=num_items_in_batch,
            **options,
        )
