"""Call conventions of the losses on features and embeddings::

    "features"       f(student_feature, teacher_feature)                one tensor each side
    "feature_lists"  f([student_features], [teacher_features])          lists of layer outputs
    "embeddings"     f(student_embedding [B, D], teacher_embedding [B, D'])
    "indexed"        f(student_embedding, teacher_embedding, index, contrast_index=None)

Student tensors pass through shape adapters (:func:`torchkd.adapters.build_adapter`) built from
a probe pass, unless the loss compares shapes itself; losses whose constructor needs sizes get
them from the probed shapes (``LossEntry.sizes``). Feature tensors ``[B, L, ...]`` keep only the
positions whose ``attention_mask`` is 1; with a teacher on its own tokens (the batch's
:data:`~torchkd.lm.aligned.TEACHER_POSITIONS`), the aligned positions of both sides instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from torchkd import losses
from torchkd.adapters import AdapterKind, build_adapter
from torchkd.calls.base import Call, Example, Owner, student_value, teacher_value
from torchkd.capture import Capture, valid_positions
from torchkd.lm.aligned import TEACHER_POSITIONS, aligned_rows
from torchkd.losses.distributed import gather_rows_with_grad
from torchkd.terms import Term, blame_term

__all__ = ["EmbeddingsCall", "FeatureListsCall", "FeaturesCall", "IndexedCall", "adapter_kind"]


def adapter_kind(term: Term) -> AdapterKind:
    """The term's adapter; ``"auto"`` is ``"none"`` for a loss that compares shapes itself."""
    if term.adapter != "auto" or not isinstance(term.loss, str):
        return term.adapter
    return "none" if losses.entry(term.loss).compares_shapes else "auto"


def _as_list(value: Tensor | list[Tensor]) -> list[Tensor]:
    return value if isinstance(value, list) else [value]


def _gathered(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """Every process's rows of ``value`` (each tensor of a list), gradients flowing back."""
    if isinstance(value, list):
        return [gather_rows_with_grad(tensor) for tensor in value]
    return gather_rows_with_grad(value)


def _aligned_features(
    student: Tensor | list[Tensor], teacher: Tensor | list[Tensor], positions: Tensor
) -> list[Any]:
    """The ``[B, L, ...]`` student and ``[B, L_T, ...]`` teacher features (each pair of a
    list) at the aligned positions (:func:`~torchkd.lm.aligned.aligned_rows`), as ``[n, ...]``."""
    if isinstance(student, list):
        pairs = [aligned_rows(s, t, None, positions) for s, t in zip(student, teacher, strict=True)]
        return [[pair[0] for pair in pairs], [pair[1] for pair in pairs]]
    aligned_student, aligned_teacher, _ = aligned_rows(student, teacher, None, positions)
    return [aligned_student, aligned_teacher]


class FeaturesCall(Call):
    signature = "features"
    adapts = True
    gathers = True
    masks = True

    def build(self, term: Term, capture: Capture, owner: Owner) -> tuple[nn.ModuleDict, dict]:
        parts, kwargs = super().build(term, capture, owner)
        student = _as_list(student_value(term.student, capture, term))
        teacher = _as_list(teacher_value(term, capture, term.teacher_index))
        kind = adapter_kind(term)
        if kind == "none":
            parts["adapters"] = nn.ModuleList(nn.Identity() for _ in student)
            adapted = [tuple(s.shape) for s in student]
        else:
            pairs = list(zip(student, teacher, strict=True))
            with blame_term(term, "student"):  # the taps, not the loss, are at fault
                try:
                    adapters = [build_adapter(s.shape, t.shape, kind) for s, t in pairs]
                except ValueError as error:
                    raise ValueError(
                        f"student tap {term.student!r} and teacher tap {term.teacher!r}: "
                        f"{error}; tap layers whose outputs can be compared (both "
                        "convolutional or both linear), or set adapter"
                    ) from error
            parts["adapters"] = nn.ModuleList(adapters)
            adapted = [tuple(t.shape) for t in teacher]
        sizes = losses.entry(term.loss).sizes if isinstance(term.loss, str) else None
        if sizes is not None:
            kwargs = {**sizes(adapted, [tuple(t.shape) for t in teacher]), **kwargs}
        return parts, kwargs

    def arguments(self, term, capture, batch, owner, temperature):
        student = _as_list(student_value(term.student, capture, term))
        adapters = owner.extras[term.name]["adapters"]
        adapted = [adapter(s) for adapter, s in zip(adapters, student, strict=True)]
        args = [
            adapted if self.lists else adapted[0],
            teacher_value(term, capture, term.teacher_index),
        ]
        positions = batch.get(TEACHER_POSITIONS)
        if self.masks and positions is not None:  # a teacher on its own tokens
            args = _aligned_features(*args, positions)
        elif self.masks and capture.attention_mask is not None:
            args = [valid_positions(value, capture.attention_mask) for value in args]
        if term.global_batch and owner.training:
            args = [_gathered(value) for value in args]
        return args, {} if temperature is None else {"temperature": temperature}

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        return (example.randn(example.batch, 3, 4, 4), example.randn(example.batch, 3, 4, 4))


class FeatureListsCall(FeaturesCall):
    signature = "feature_lists"
    lists = True

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        batch = example.batch
        student = [example.randn(batch, 3, 4, 4), example.randn(batch, 4, 2, 2)]
        return (student, [example.randn(batch, 3, 4, 4), example.randn(batch, 4, 2, 2)])


class EmbeddingsCall(FeaturesCall):
    signature = "embeddings"
    masks = False

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        return (example.randn(example.batch, 6), example.randn(example.batch, 6))


class IndexedCall(FeaturesCall):
    signature = "indexed"
    masks = False
    gathers = False

    def arguments(self, term, capture, batch, owner, temperature):
        args, kwargs = super().arguments(term, capture, batch, owner, temperature)
        kwargs["contrast_index"] = batch.get("contrast_index")
        return [*args, self.batch_entry(batch, "index", term)], kwargs

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        index = torch.randperm(example.num_data, generator=example.generator)[: example.batch]
        return (example.randn(example.batch, 6), example.randn(example.batch, 6), index)
