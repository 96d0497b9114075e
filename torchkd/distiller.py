"""The Distiller: a student, frozen teachers and weighted loss terms -> one training loss.

One batch flows top to bottom through :meth:`Distiller.forward`:

1. every teacher runs under ``torch.no_grad()`` with forward hooks (:class:`~torchkd.taps.Taps`)
   on the module paths the terms read; then the student runs the same way, with gradients;
2. each :class:`Term` picks its tensors (``"logits"`` = the model's output logits, any other
   string = a tapped module path), passes student tensors through its shape adapters, and calls
   its loss as the call convention of the loss's registered signature says
   (:mod:`torchkd.calls`, which also checked the term and planned what each model keeps);
3. the terms are weighted and summed:

.. math::

    \\mathcal{L} = \\sum_i w_i(t)\\,\\mathcal{L}_i
    \\;+\\; \\sum_{i \\in \\text{auto}} \\left(e^{-s_i}\\mathcal{L}_i + s_i\\right)

where :math:`w_i(t)` is a constant or a schedule of training progress and the "auto" terms use
the homoscedastic uncertainty weighting of Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses", CVPR 2018 (:math:`s_i = \\log\\sigma_i^2` learned).

Language models (:mod:`torchkd.lm`): a ``"hidden_states"`` term (e.g. ``fused_linear_kd``) gets
each causal LM's final hidden state and output projection, with ``batch["labels"]`` and the
batch's :class:`~torchkd.lm.TokenNormalizer` (``batch["token_normalizer"]``); a causal LM
whose logits no term reads runs its body alone, so the ``[tokens x vocabulary]`` logits are
never built. ``teacher="cache"`` reads the teacher's
top-k distribution from the batch instead of running a teacher. Feature terms on ``[B, L, H]``
tensors keep only the positions whose ``attention_mask`` (in the inputs mapping) is 1; logit
terms on token logits ``[B, L, V]`` only those whose label is valid too, and divide by the
batch's token normalizer (:mod:`torchkd.calls.tokens`).

Cross-modal distillation (Gupta, Hoffman & Malik, "Cross Modal Distillation for Supervision
Transfer", CVPR 2016): with ``teacher_inputs_key`` the teachers read another entry of the batch
than the student (e.g. a docstring for the teacher, the code for the student, both of the same
sample); every term compares the two forwards as usual, and the attention mask of token terms
stays the student's.

:meth:`Distiller.build` must be called once with an example batch before the optimizer is
built: it probes the tapped shapes, builds adapters, loss modules whose sizes depend on those
shapes, learned weights and temperatures, all in :attr:`Distiller.extras`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from torchkd.batch import as_batch
from torchkd.calls import Call, checked_call, term_loss
from torchkd.capture import Capture, ModelPlan, num_rows, run_model
from torchkd.forward import call_model, select_logits
from torchkd.lm import attention_mask, is_causal_lm
from torchkd.schedules import Schedule, as_schedule, progress
from torchkd.taps import resolve_module
from torchkd.teachers import as_teacher_list, teacher_outputs
from torchkd.temperature import LearnableTemperature
from torchkd.terms import (
    CACHE,
    LOGITS,
    DistillOutput,
    Term,
    TermError,
    UncertaintyWeight,
    blame_term,
    term_error,
)

__all__ = [
    "DistillOutput",
    "Distiller",
    "OnPolicyHook",
    "Term",
    "TermError",
    "UncertaintyWeight",
    "as_batch",
]


class OnPolicyHook(Protocol):
    """What ``Distiller(on_policy=...)`` calls on each training batch (e.g.
    ``torchkd.lm.on_policy.OnPolicy``): returns the batch to train on."""

    def __call__(
        self,
        batch: Mapping[str, Any],
        *,
        step: int,
        student: nn.Module,
        teachers: Sequence[nn.Module],
    ) -> Mapping[str, Any]: ...


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
        teacher_inputs_key: batch key of the teachers' inputs (cross-modal distillation: the
            same samples in another modality); None: the student's ``inputs_key``.
        on_policy: called by :meth:`prepare` on every training batch (on-policy sampling,
            ``torchkd.lm.on_policy.OnPolicy``); None trains on the batches as they come.

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
        teacher_inputs_key: str | None = None,
        on_policy: OnPolicyHook | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teachers = as_teacher_list(teachers)
        self.extras = nn.ModuleDict()
        self.output_key = output_key
        self.labels_key = labels_key
        self.inputs_key = inputs_key
        self.teacher_inputs_key = inputs_key if teacher_inputs_key is None else teacher_inputs_key
        self.on_policy = on_policy
        if on_policy is not None and self.teacher_inputs_key != inputs_key:
            raise ValueError(
                f"on_policy samples continuations of the student's inputs ({inputs_key!r}); "
                f"teachers reading other inputs (teacher_inputs_key={teacher_inputs_key!r}) "
                "cannot score them: drop one"
            )
        if len(terms) == 0:
            raise ValueError("a Distiller needs at least one Term")
        self.terms = tuple(terms)
        self._calls: dict[str, Call] = {}
        for term in self.terms:
            if term.name in self._calls:
                raise ValueError(f"duplicate term name {term.name!r}")
            with blame_term(term):
                self._calls[term.name] = self._check_term(term)
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
        self._student_plan = self._plan(self.student, self._student_paths, self.terms, "student")
        self._teacher_plans = [
            self._plan(teacher, paths, self._terms_reading(index), "teacher")
            for index, (teacher, paths) in enumerate(
                zip(self.teachers, self._teacher_paths, strict=True)
            )
        ]
        self._losses: dict[str, Callable[..., Tensor]] = {}
        self._step, self._total_steps = 0, 1
        self._progress_listeners: list[nn.Module] | None = None
        self._step_weights = {name: weight(0, 1) for name, weight in self._weights.items()}
        self._built = False

    # ---------------------------------------------------------------- validation
    def _check_term(self, term: Term) -> Call:
        """The term's call convention, after the checks every convention shares and its own."""
        where = f"term {term.name!r}"
        if not isinstance(term.name, str) or not term.name or "." in term.name:
            raise ValueError(f"term names must be non-empty strings without '.', got {term.name!r}")
        if hasattr(self.extras, term.name):
            raise ValueError(f"{where}: the name clashes with an nn.ModuleDict attribute")
        return checked_call(term, self)

    def _check_paths(self, term: Term) -> None:
        with blame_term(term, "student"):
            for path in _paths([term.student]):
                resolve_module(self.student, path)
        with blame_term(term, "teacher"):
            for index in self._calls[term.name].teacher_indices(term, len(self.teachers)):
                for path in _paths([term.teacher]):
                    resolve_module(self.teachers[index], path)

    def _terms_reading(self, teacher_index: int) -> list[Term]:
        return [
            term
            for term in self.terms
            if teacher_index in self._calls[term.name].teacher_indices(term, len(self.teachers))
        ]

    def _plan(self, model: nn.Module, paths: list[str], terms: list[Term], side: str) -> ModelPlan:
        """Run a causal LM's body alone when no term reads its logits (and no tap lies outside
        the body); skip a causal-LM teacher no term reads. Other models run in full."""
        calls = [(self._calls[term.name], term) for term in terms]
        reads_logits = any(call.reads_logits(term, side) for call, term in calls)
        reads_hidden = any(call.reads_hidden for call, _ in calls)
        if not is_causal_lm(model) or reads_logits:
            return ModelPlan(paths, "full", reads_hidden)
        if side == "teacher" and not terms:
            return ModelPlan(paths, "skip", False)
        body = {id(module) for module in model.get_decoder().modules()}
        inside = all(id(resolve_module(model, path)) in body for path in paths)
        return ModelPlan(paths, "body" if inside else "full", reads_hidden)

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
                capture = self._capture(self._as_batch(example_batch))
        finally:
            self.student.train(was_training)
        reference = next((p for p in self.student.parameters() if p.is_floating_point()), None)
        probed = capture.student_logits
        probed = capture.student_hidden if probed is None else probed
        device = (
            (probed.device if probed is not None else torch.device("cpu"))
            if reference is None
            else reference.device
        )
        dtype = torch.get_default_dtype() if reference is None else reference.dtype
        built = {}
        for term in self.terms:
            with blame_term(term, "loss_kwargs"):
                built[term.name] = self._build_term(term, capture)
        for name, (parts, loss) in built.items():  # all terms built: nothing half-made on error
            self.extras[name] = parts.to(device=device, dtype=dtype)
            self._losses[name] = loss
        self._built = True
        self._progress_listeners = None
        self.extras.train(self.training)
        self.set_progress(self._step, self._total_steps)

    def _build_term(
        self, term: Term, capture: Capture
    ) -> tuple[nn.ModuleDict, Callable[..., Tensor]]:
        parts, kwargs = self._calls[term.name].build(term, capture, self)
        loss = term_loss(term, kwargs)
        if isinstance(loss, nn.Module):
            parts["loss"] = loss
        if term.temperature == "learned":
            parts["temperature"] = LearnableTemperature()
        elif isinstance(term.temperature, nn.Module):
            parts["temperature"] = term.temperature
        if term.weight == "auto":
            parts["weight"] = UncertaintyWeight()
        return parts, loss

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
        capture = self._capture(batch)
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
            num_samples=num_rows(batch[self.inputs_key], capture),
        )

    def prepare(self, batch: Mapping[str, Any], step: int) -> Mapping[str, Any]:
        """The batch to train on at optimizer step ``step``: ``on_policy(batch, step=...,
        student=..., teachers=...)`` in training mode when ``on_policy`` is set, else
        ``batch`` unchanged. The training loop calls it on every micro-batch of a step before
        the forward passes."""
        if self.on_policy is None or not self.training:
            return batch
        return self.on_policy(batch, step=step, student=self.student, teachers=self.teachers)

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

    def teacher_inputs(self, batch: Mapping[str, Any]) -> Any:
        """The teachers' inputs of ``batch``: its ``teacher_inputs_key`` entry (the student's
        ``inputs_key`` unless cross-modal)."""
        return self._inputs(batch, self.teacher_inputs_key, "teacher_inputs_key")

    def _inputs(
        self, batch: Mapping[str, Any], key: str | None = None, argument: str = "inputs_key"
    ) -> Any:
        key = self.inputs_key if key is None else key
        if key not in batch:
            raise KeyError(f"batch has no {key!r} entry ({argument}; keys: {list(batch)})")
        return batch[key]

    def _capture(self, batch: Mapping[str, Any]) -> Capture:
        inputs = self._inputs(batch)
        teacher_inputs = self.teacher_inputs(batch) if self.teachers else None
        teacher_logits, teacher_hidden, teacher_taps = [], [], []
        with torch.no_grad():
            for teacher, plan in zip(self.teachers, self._teacher_plans, strict=True):
                logits, hidden, taps = run_model(teacher, plan, teacher_inputs, self.output_key)
                teacher_logits.append(logits)
                teacher_hidden.append(hidden)
                teacher_taps.append(taps)
        logits, hidden, taps = run_model(self.student, self._student_plan, inputs, self.output_key)
        return Capture(
            logits,
            hidden,
            taps,
            teacher_logits,
            teacher_hidden,
            teacher_taps,
            attention_mask(inputs),
        )

    def _term_value(
        self,
        term: Term,
        capture: Capture,
        batch: Mapping[str, Any],
        temperatures: dict[str, float],
    ) -> Tensor:
        """Call the term's loss as its call convention says (``torchkd.calls``)."""
        temperature = self._temperature(term, capture)
        if temperature is not None:
            temperatures[term.name] = float(
                temperature.detach().mean() if isinstance(temperature, Tensor) else temperature
            )
        value = self._calls[term.name].value(
            term, capture, batch, self, temperature, self._losses[term.name]
        )
        return _check_scalar(value, term)

    def _temperature(self, term: Term, capture: Capture) -> float | Tensor | None:
        if term.temperature is None:
            return None
        parts = self.extras[term.name]
        if "temperature" in parts:
            teacher_logits = capture.teacher_logits[term.teacher_index]
            return parts["temperature"](capture.student_logits, teacher_logits)
        return self._temperature_schedules[term.name](self._step, self._total_steps)


# -------------------------------------------------------------------- helpers
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
            if path not in (LOGITS, CACHE) and path not in paths:
                paths.append(path)
    return paths


def _check_scalar(value: Tensor, term: Term) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"term {term.name!r} returned {shape}, expected a scalar tensor (a loss with "
            "reduction='none' cannot be weighted and summed)"
        )
    return value
