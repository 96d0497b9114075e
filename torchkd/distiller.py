"""The Distiller: a student, frozen teachers and weighted loss terms -> one training loss.

One batch flows top to bottom through :meth:`Distiller.forward`:

1. every teacher runs under ``torch.no_grad()`` with forward hooks (:class:`~torchkd.taps.Taps`)
   on the module paths the terms read; then the student runs the same way, with gradients;
2. each :class:`Term` picks its tensors (``"logits"`` = the model's output logits, any other
   string = a tapped module path), passes student tensors through its shape adapters, and calls
   its loss the way the loss's registered signature says (see ``torchkd.losses.registry``);
3. the terms are weighted and summed:

.. math::

    \\mathcal{L} = \\sum_i w_i(t)\\,\\mathcal{L}_i
    \\;+\\; \\sum_{i \\in \\text{auto}} \\left(e^{-s_i}\\mathcal{L}_i + s_i\\right)

where :math:`w_i(t)` is a constant or a schedule of training progress and the "auto" terms use
the homoscedastic uncertainty weighting of Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses", CVPR 2018 (:math:`s_i = \\log\\sigma_i^2` learned).

:meth:`Distiller.build` must be called once with an example batch before the optimizer is
built: it probes the tapped shapes, builds adapters, loss modules whose sizes depend on those
shapes, learned weights and temperatures, all in :attr:`Distiller.extras`.
"""

from __future__ import annotations

import inspect
import numbers
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from torchkd import losses
from torchkd.adapters import ADAPTER_KINDS, AdapterKind, build_adapter
from torchkd.losses.distributed import gather_rows_with_grad
from torchkd.losses.registry import Signature
from torchkd.schedules import Schedule, as_schedule, progress
from torchkd.taps import Taps, resolve_module
from torchkd.teachers import as_teacher_list, call_model, select_logits, teacher_outputs
from torchkd.temperature import LearnableTemperature
from torchkd.terms import (
    LOGITS,
    DistillOutput,
    Term,
    TermError,
    UncertaintyWeight,
    as_batch,
    blame_term,
    term_error,
)

__all__ = [
    "DistillOutput",
    "Distiller",
    "Term",
    "TermError",
    "UncertaintyWeight",
    "as_batch",
]

SIGNATURES: tuple[str, ...] = typing.get_args(Signature)
_LOGIT_SIGNATURES = ("labels", "logits", "logits_labels", "multi_teacher")
_GATHERED_SIGNATURES = ("logits", "features", "feature_lists", "embeddings")


@dataclass
class _Capture:
    """Everything one forward pass of the models produced."""

    student_logits: Tensor
    student_taps: Taps | dict[str, Any]
    teacher_logits: list[Tensor]
    teacher_taps: list[Taps | dict[str, Any]]


class Distiller(nn.Module):
    """Student + frozen teachers + weighted loss terms.

    Args:
        student: the network being trained.
        teachers: one teacher, a sequence of teachers, or ``None`` (supervised baseline). They
            are frozen and stay in eval mode (:class:`~torchkd.teachers.TeacherList`).
        terms: the loss terms (at least one; unique names).
        output_key: where the logits are in the models' outputs (default: a tensor output
            itself, ``[0]`` of a tuple, ``"logits"`` of a dict or ``ModelOutput``).
        labels_key: batch key of the labels (may be absent: unlabeled transfer batches).
        inputs_key: batch key of the inputs (a tensor, or a mapping passed as ``**kwargs``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> distiller = Distiller(student, None, [Term("ce", "ce")])
        >>> batch = {"inputs": torch.randn(8, 4), "labels": torch.randint(0, 3, (8,))}
        >>> distiller.build(batch)
        >>> output = distiller(batch)
        >>> sorted(output.terms), output.weights
        (['ce'], {'ce': 1.0})
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | Sequence[nn.Module] | None,
        terms: Sequence[Term],
        *,
        output_key: str | int | None = None,
        labels_key: str = "labels",
        inputs_key: str = "inputs",
    ) -> None:
        super().__init__()
        self.student = student
        self.teachers = as_teacher_list(teachers)
        self.extras = nn.ModuleDict()
        self.output_key = output_key
        self.labels_key = labels_key
        self.inputs_key = inputs_key
        if len(terms) == 0:
            raise ValueError("a Distiller needs at least one Term")
        self.terms = tuple(terms)
        self._signatures: dict[str, str] = {}
        for term in self.terms:
            if term.name in self._signatures:
                raise ValueError(f"duplicate term name {term.name!r}")
            with blame_term(term):
                self._signatures[term.name] = self._check_term(term)
        self._weights: dict[str, Schedule] = {}
        self._temperature_schedules: dict[str, Schedule] = {}
        for term in self.terms:
            if term.weight != "auto":
                with blame_term(term, "weight"):
                    self._weights[term.name] = _term_schedule(
                        term, "weight", "a number, a Schedule or 'auto'"
                    )
            scheduled = term.temperature not in (None, "learned")
            if scheduled and not isinstance(term.temperature, nn.Module):
                with blame_term(term, "temperature"):
                    self._temperature_schedules[term.name] = _term_schedule(
                        term, "temperature", "a number, a Schedule, 'learned' or a module"
                    )
        self._student_paths = _paths(term.student for term in self.terms)
        self._teacher_paths = [
            _paths(term.teacher for term in self._terms_reading(index))
            for index in range(len(self.teachers))
        ]
        for term in self.terms:  # unknown paths fail now, naming the term, side and closest names
            self._check_paths(term)
        self._losses: dict[str, Callable[..., Tensor]] = {}
        self._step, self._total_steps = 0, 1
        self._progress_listeners: list[nn.Module] | None = None
        self._step_weights = {name: weight(0, 1) for name, weight in self._weights.items()}
        self._built = False

    # ---------------------------------------------------------------- validation
    def _check_term(self, term: Term) -> str:
        where = f"term {term.name!r}"
        if not isinstance(term.name, str) or not term.name or "." in term.name:
            raise ValueError(f"term names must be non-empty strings without '.', got {term.name!r}")
        if hasattr(self.extras, term.name):
            raise ValueError(f"{where}: the name clashes with an nn.ModuleDict attribute")
        signature = _resolve_signature(term)
        if signature == "hidden_states":
            raise ValueError(
                f"{where}: {signature!r} losses take hidden states and output-projection weights, "
                "not model outputs; call them directly (e.g. torchkd.losses."
                "fused_linear_kd_loss on the last hidden state and lm_head.weight)"
            )
        if signature != "labels" and not self.teachers:
            raise ValueError(f"{where} (signature {signature!r}) needs a teacher; none was given")
        if signature not in ("labels", "multi_teacher") and not (
            0 <= term.teacher_index < len(self.teachers)
        ):
            raise ValueError(
                f"{where}: teacher_index={term.teacher_index} out of range for "
                f"{len(self.teachers)} teacher(s)"
            )
        is_list = signature == "feature_lists"
        for side in ("student", "teacher"):
            spec = getattr(term, side)
            if is_list != isinstance(spec, list) or (is_list and not spec):
                expected = "a non-empty list of paths" if is_list else "one path or 'logits'"
                raise ValueError(f"{where}: {side} must be {expected} for {signature!r} losses")
        if is_list and len(term.student) != len(term.teacher) and _adapter_kind(term) != "none":
            raise ValueError(
                f"{where}: {len(term.student)} student paths but {len(term.teacher)} teacher "
                "paths; adapters pair them up (adapter='none' leaves the pairing to the loss)"
            )
        if term.adapter not in ADAPTER_KINDS:
            raise ValueError(
                f"{where}: adapter must be one of {ADAPTER_KINDS}, got {term.adapter!r}"
            )
        if signature in _LOGIT_SIGNATURES and term.adapter not in ("auto", "none"):
            raise ValueError(f"{where}: adapters apply to feature terms, not {signature!r} losses")
        if term.temperature is not None and "temperature" in term.loss_kwargs:
            raise ValueError(
                f"{where}: temperature is given twice, as Term.temperature={term.temperature!r} "
                f"and loss_kwargs['temperature']={term.loss_kwargs['temperature']!r}; keep one"
            )
        if term.global_batch and signature not in _GATHERED_SIGNATURES:
            raise ValueError(
                f"{where}: global_batch gathers the batch of {_GATHERED_SIGNATURES} losses; "
                f"a {signature!r} loss averages over samples, so every process's share suffices"
            )
        if term.temperature is not None and signature == "labels":
            raise ValueError(f"{where}: a temperature needs a teacher; 'labels' losses have none")
        if isinstance(term.temperature, numbers.Real) and not term.temperature > 0:
            raise ValueError(f"{where}: temperature must be > 0, got {term.temperature}")
        return signature

    def _check_paths(self, term: Term) -> None:
        signature = self._signatures[term.name]
        with blame_term(term, "student"):
            for path in _paths([term.student]):
                resolve_module(self.student, path)
        if signature == "labels":
            return
        indices = (
            range(len(self.teachers)) if signature == "multi_teacher" else [term.teacher_index]
        )
        with blame_term(term, "teacher"):
            for index in indices:
                for path in _paths([term.teacher]):
                    resolve_module(self.teachers[index], path)

    def _terms_reading(self, teacher_index: int) -> list[Term]:
        return [
            term
            for term in self.terms
            if self._signatures[term.name] == "multi_teacher"
            or (self._signatures[term.name] != "labels" and term.teacher_index == teacher_index)
        ]

    # ---------------------------------------------------------------- building
    def build(self, example_batch: Mapping[str, Any]) -> None:
        """Probe shapes with one forward pass and create everything in :attr:`extras`.

        The student runs in eval mode under ``torch.no_grad()`` (no BatchNorm statistics are
        updated). Call it before building the optimizer and before ``load_state_dict``; calling
        it again does nothing.
        """
        if self._built:
            return
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                capture = self._capture(self._inputs(self._as_batch(example_batch)))
        finally:
            self.student.train(was_training)
        reference = next((p for p in self.student.parameters() if p.is_floating_point()), None)
        device = capture.student_logits.device if reference is None else reference.device
        dtype = torch.get_default_dtype() if reference is None else reference.dtype
        built = {}
        for term in self.terms:
            with blame_term(term, "loss_kwargs"):
                self._check_classes(term, capture)
                built[term.name] = self._build_term(term, capture)
        for name, (parts, loss) in built.items():  # all terms built: nothing half-made on error
            self.extras[name] = parts.to(device=device, dtype=dtype)
            self._losses[name] = loss
        self._built = True
        self._progress_listeners = None
        self.extras.train(self.training)
        self.set_progress(self._step, self._total_steps)

    def _check_classes(self, term: Term, capture: _Capture) -> None:
        """Student and teacher logits compared by a logit term must have the same classes."""
        signature = self._signatures[term.name]
        if signature not in ("logits", "logits_labels", "multi_teacher"):
            return
        if term.student != LOGITS or (signature != "multi_teacher" and term.teacher != LOGITS):
            return
        indices = (
            range(len(self.teachers)) if signature == "multi_teacher" else [term.teacher_index]
        )
        student_classes = capture.student_logits.shape[-1]
        for index in indices:
            teacher_classes = capture.teacher_logits[index].shape[-1]
            if teacher_classes != student_classes:
                raise TermError(
                    term.name,
                    "",
                    f"term {term.name!r}: the student's logits have {student_classes} classes "
                    f"but teacher {index}'s have {teacher_classes}; give both models the same "
                    "number of classes (e.g. their num_classes argument)",
                )

    def _build_term(
        self, term: Term, capture: _Capture
    ) -> tuple[nn.ModuleDict, Callable[..., Tensor]]:
        signature = self._signatures[term.name]
        parts = nn.ModuleDict()
        kwargs = dict(term.loss_kwargs)
        if signature not in _LOGIT_SIGNATURES:
            student = _as_list(self._student_value(term.student, capture, term))
            teacher = _as_list(self._teacher_value(term, capture, term.teacher_index))
            kind = _adapter_kind(term)
            if kind == "none":
                parts["adapters"] = nn.ModuleList(nn.Identity() for _ in student)
                adapted = [tuple(s.shape) for s in student]
            else:
                pairs = list(zip(student, teacher, strict=True))
                parts["adapters"] = nn.ModuleList(
                    build_adapter(s.shape, t.shape, kind) for s, t in pairs
                )
                adapted = [tuple(t.shape) for t in teacher]
            sizes = losses.entry(term.loss).sizes if isinstance(term.loss, str) else None
            if sizes is not None:
                kwargs = {**sizes(adapted, [tuple(t.shape) for t in teacher]), **kwargs}
        loss = self._create_loss(term, kwargs)
        if isinstance(loss, nn.Module):
            parts["loss"] = loss
        if term.temperature is not None and not _takes_temperature(loss):
            raise TermError(
                term.name,
                "temperature",
                f"term {term.name!r}: temperature={term.temperature!r} needs a loss whose call "
                f"takes `temperature=`; {type(loss).__name__} does not",
            )
        if term.temperature == "learned":
            parts["temperature"] = LearnableTemperature()
        elif isinstance(term.temperature, nn.Module):
            parts["temperature"] = term.temperature
        if term.weight == "auto":
            parts["weight"] = UncertaintyWeight()
        return parts, loss

    def _create_loss(self, term: Term, kwargs: dict[str, Any]) -> Callable[..., Tensor]:
        if not isinstance(term.loss, str):
            return term.loss
        try:
            return losses.create(term.loss, **kwargs)
        except (TypeError, ValueError) as error:
            raise TermError(
                term.name,
                "loss_kwargs",
                f"term {term.name!r}: cannot build loss {term.loss!r} with {kwargs}: {error}",
            ) from error

    # ---------------------------------------------------------------- running
    def set_progress(self, step: int, total_steps: int) -> None:
        """Set training progress for weight/temperature schedules and every extras module
        with a ``set_progress`` method (e.g. the CTKD λ ramp)."""
        progress(step, total_steps)
        self._step, self._total_steps = step, total_steps
        if self._progress_listeners is None:  # found once after build (extras are fixed then)
            self._progress_listeners = [
                module
                for module in self.extras.modules()
                if module is not self.extras and callable(getattr(module, "set_progress", None))
            ]
        for module in self._progress_listeners:
            module.set_progress(step, total_steps)
        self._step_weights = {
            name: weight(step, total_steps) for name, weight in self._weights.items()
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates: the student's and the extras' (not the teachers')."""
        params = chain(self.student.parameters(), self.extras.parameters())
        return [param for param in params if param.requires_grad]

    def forward(self, batch: Mapping[str, Any]) -> DistillOutput:
        """The weighted loss of one batch (see the module docstring)."""
        if not self._built:
            raise RuntimeError(
                "call Distiller.build(example_batch) before the first forward (and before "
                "building the optimizer): it creates the adapters and loss modules"
            )
        batch = self._as_batch(batch)
        capture = self._capture(self._inputs(batch))
        terms: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        temperatures: dict[str, float] = {}
        total: Tensor | None = None
        for term in self.terms:
            try:
                value = self._term_value(term, capture, batch, temperatures)
            except TermError:
                raise
            except (ValueError, TypeError, KeyError) as error:  # name the term at fault
                raise term_error(term, "", error) from error
            terms[term.name] = value
            parts = self.extras[term.name]
            if "weight" in parts:
                weighted = parts["weight"](value)
                weights[term.name] = float(parts["weight"].weight().detach())
            else:
                weights[term.name] = self._step_weights[term.name]  # set by set_progress
                weighted = weights[term.name] * value
            total = weighted if total is None else total + weighted
        return DistillOutput(
            loss=total,
            terms=terms,
            weights=weights,
            student_logits=capture.student_logits,
            teacher_logits=capture.teacher_logits,
            temperatures=temperatures,
        )

    def student_logits(self, inputs: Any) -> Tensor:
        """The student's logits for ``inputs`` (selected with ``output_key``)."""
        return select_logits(call_model(self.student, inputs), self.output_key)

    def teacher_logits(self, inputs: Any) -> list[Tensor]:
        """Each teacher's logits for ``inputs``, computed under ``torch.no_grad()``."""
        return [
            select_logits(out, self.output_key) for out in teacher_outputs(self.teachers, inputs)
        ]

    def _as_batch(self, batch: Mapping[str, Any] | Sequence[Any]) -> Mapping[str, Any]:
        return as_batch(batch, self.inputs_key, self.labels_key)

    def _inputs(self, batch: Mapping[str, Any]) -> Any:
        if self.inputs_key not in batch:
            raise KeyError(f"batch has no {self.inputs_key!r} entry (keys: {list(batch)})")
        return batch[self.inputs_key]

    def _capture(self, inputs: Any) -> _Capture:
        teacher_logits, teacher_taps = [], []
        with torch.no_grad():
            for teacher, paths in zip(self.teachers, self._teacher_paths, strict=True):
                output, taps = _call_tapped(teacher, paths, inputs)
                teacher_logits.append(select_logits(output, self.output_key))
                teacher_taps.append(taps)
        output, student_taps = _call_tapped(self.student, self._student_paths, inputs)
        return _Capture(
            select_logits(output, self.output_key), student_taps, teacher_logits, teacher_taps
        )

    def _student_value(self, spec: str | list[str], capture: _Capture, term: Term) -> Any:
        if isinstance(spec, list):
            return [self._student_value(path, capture, term) for path in spec]
        if spec == LOGITS:
            return capture.student_logits
        return _tensor(capture.student_taps[spec], spec, "student", term)

    def _teacher_value(self, term: Term, capture: _Capture, index: int) -> Any:
        specs = term.teacher if isinstance(term.teacher, list) else [term.teacher]
        values = [
            capture.teacher_logits[index]
            if spec == LOGITS
            else _tensor(capture.teacher_taps[index][spec], spec, f"teacher {index}", term)
            for spec in specs
        ]
        return values if isinstance(term.teacher, list) else values[0]

    def _term_value(
        self,
        term: Term,
        capture: _Capture,
        batch: Mapping[str, Any],
        temperatures: dict[str, float],
    ) -> Tensor:
        """Call the term's loss the way its signature says (see ``losses.registry``)."""
        signature = self._signatures[term.name]
        loss = self._losses[term.name]
        student = self._student_value(term.student, capture, term)
        if signature == "labels":
            labels = self._batch_entry(batch, self.labels_key, term, signature)
            return _check_scalar(loss(student, labels), term)
        kwargs: dict[str, Any] = {}
        temperature = self._temperature(term, capture)
        if temperature is not None:
            temperatures[term.name] = float(
                temperature.detach().mean() if isinstance(temperature, Tensor) else temperature
            )
            kwargs["temperature"] = temperature
        if signature == "multi_teacher":
            teachers = [self._teacher_value(term, capture, i) for i in range(len(self.teachers))]
            kwargs["labels"] = batch.get(self.labels_key)
            return _check_scalar(loss(student, teachers, **kwargs), term)
        teacher = self._teacher_value(term, capture, term.teacher_index)
        args: list[Any] = [student, teacher]
        if signature not in _LOGIT_SIGNATURES:
            adapters = self.extras[term.name]["adapters"]
            adapted = [adapter(s) for adapter, s in zip(adapters, _as_list(student), strict=True)]
            args[0] = adapted if signature == "feature_lists" else adapted[0]
        if term.global_batch and self.training:
            args = [_gather_rows(value) for value in args]
        if signature == "logits_labels":
            args.append(self._batch_entry(batch, self.labels_key, term, signature))
        if signature == "indexed":
            args.append(self._batch_entry(batch, "index", term, signature))
            kwargs["contrast_index"] = batch.get("contrast_index")
        return _check_scalar(loss(*args, **kwargs), term)

    def _temperature(self, term: Term, capture: _Capture) -> float | Tensor | None:
        if term.temperature is None:
            return None
        parts = self.extras[term.name]
        if "temperature" in parts:
            teacher_logits = capture.teacher_logits[term.teacher_index]
            return parts["temperature"](capture.student_logits, teacher_logits)
        return self._temperature_schedules[term.name](self._step, self._total_steps)

    @staticmethod
    def _batch_entry(batch: Mapping[str, Any], key: str, term: Term, signature: str) -> Tensor:
        if batch.get(key) is None:
            raise ValueError(
                f"term {term.name!r} (loss {_loss_name(term)}, signature {signature!r}) needs "
                f"batch[{key!r}], but the batch has none (keys: {list(batch)}); unlabeled "
                "batches can only feed terms that need no labels"
            )
        return batch[key]


# -------------------------------------------------------------------- helpers
def _call_tapped(
    model: nn.Module, paths: list[str], inputs: Any
) -> tuple[Any, Taps | dict[str, Any]]:
    """``model``'s output and its taps at ``paths`` (no hooks at all when nothing is tapped)."""
    if not paths:
        return call_model(model, inputs), {}
    with Taps(model, paths) as taps:
        return call_model(model, inputs), taps


def _resolve_signature(term: Term) -> str:
    if isinstance(term.loss, str):
        registered = losses.entry(term.loss).signature
        if term.signature not in (None, registered):
            raise ValueError(
                f"term {term.name!r}: loss {term.loss!r} has signature {registered!r}, "
                f"not {term.signature!r}"
            )
        return registered
    if not callable(term.loss):
        raise TypeError(
            f"term {term.name!r}: loss must be a registered name, a module or a callable, "
            f"got {type(term.loss).__name__}"
        )
    if term.loss_kwargs:
        raise ValueError(f"term {term.name!r}: loss_kwargs are only used with a loss name")
    signature = term.signature or getattr(term.loss, "signature", None)
    if signature not in SIGNATURES:
        raise ValueError(
            f"term {term.name!r}: a custom loss needs signature= one of {SIGNATURES}, "
            f"got {signature!r}"
        )
    return signature


def _term_schedule(term: Term, field_name: str, accepted: str) -> Schedule:
    value = getattr(term, field_name)
    try:
        return as_schedule(value)
    except TypeError as error:
        raise TypeError(
            f"term {term.name!r}: {field_name} must be {accepted}, got {value!r}"
        ) from error


def _paths(specs: Any) -> list[str]:
    paths: list[str] = []
    for spec in specs:
        for path in spec if isinstance(spec, list) else [spec]:
            if path != LOGITS and path not in paths:
                paths.append(path)
    return paths


def _gather_rows(value: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """Every process's rows of ``value`` (each tensor of a list), gradients flowing back."""
    if isinstance(value, list):
        return [gather_rows_with_grad(tensor) for tensor in value]
    return gather_rows_with_grad(value)


def _as_list(value: Tensor | list[Tensor]) -> list[Tensor]:
    return value if isinstance(value, list) else [value]


def _adapter_kind(term: Term) -> AdapterKind:
    if term.adapter != "auto" or not isinstance(term.loss, str):
        return term.adapter
    return "none" if losses.entry(term.loss).compares_shapes else "auto"


def _takes_temperature(loss: Callable[..., Tensor]) -> bool:
    """Whether ``loss`` (its ``forward`` for a module) takes a ``temperature=`` keyword."""
    function = loss.forward if isinstance(loss, nn.Module) else loss
    parameters = inspect.signature(function).parameters.values()
    return any(
        p.name == "temperature" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )


def _loss_name(term: Term) -> str:
    return repr(term.loss) if isinstance(term.loss, str) else type(term.loss).__name__


def _tensor(value: Any, path: str, side: str, term: Term) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"term {term.name!r}: the {side} output at {path!r} is a {type(value).__name__}, "
            "not a tensor; tap a submodule whose output is a tensor"
        )
    return value


def _check_scalar(value: Tensor, term: Term) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"term {term.name!r} returned {shape}, expected a scalar tensor (a loss with "
            "reduction='none' cannot be weighted and summed)"
        )
    return value
