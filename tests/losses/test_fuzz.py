"""Fuzz suite: every registered loss on edge inputs, each outcome sorted into a class.

Parametrized over ``torchkd.losses.available()``; a loss's inputs are built from its registry
signature (through the template's ``make_inputs``, which also gives each loss's shapes), so a
new loss is fuzzed the day it is registered. A deterministic grid (dtypes f16/bf16/f32/f64,
tiny/ordinary/large/huge/zero values, identical student and teacher, token logits with a row
mask, ``-inf`` vocabulary masking, batches of 0, 1 and 2, temperatures, narrow label dtypes,
a float64 teacher, the edge cases of :func:`_edge_cases` (standardized constant rows, one
unmasked class, learned and int temperatures, half modules), and every numeric
hyperparameter set to NaN, +-inf, -1, 0 or a string) plus a
derandomized hypothesis search. Outcome classes:

- ``finite``: a finite result with finite gradients (w.r.t. every floating-point input and a
  learned temperature; a non-finite gradient is ``overflow`` only where the float64 gradient
  is beyond the gradient dtype's range);
- ``named error``: ``ValueError``/``TypeError`` whose message names the argument at fault;
- ``overflow``: a non-finite result whose true value, or one of its per-row values
  (``reduction="none"``), is out of the result dtype's range (the same inputs computed in
  float64 give an infinity or a value beyond the dtype's largest; for float64 inputs, which
  have no wider reference, only the "huge" values near float64's largest);
- ``silent non-finite``: a non-finite result where the true value is representable, or any
  non-finite result of shared ``-inf`` masking (a defect);
- ``unclear exception``: any other exception, or an error that does not name the argument.

The suite fails on any ``silent non-finite`` or ``unclear exception``. ``-inf`` masking is
shared by student and teacher, so those cases must be finite as well. Print the counts with
``python -m tests.losses.fuzz_report`` (or ``pytest tests/losses/test_fuzz.py -s``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from torchkd.losses import available, entry

from .references import REFERENCES
from .test_template import LOGIT_SIGNATURES, has_teacher, make_inputs, make_loss, signature_of

NAMES = available()
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}
SCALES = {"tiny": 1e-30, "ordinary": 2.0, "large": 1e4, "huge": math.inf, "zero": 0.0}
TEMPERATURES = (0.05, 1.0, 4.0, 100.0, 1e4, 1e6)
BAD_FLOATS: tuple[object, ...] = (math.nan, math.inf, -math.inf, -1.0, 0.0, "2")
BAD_INTS: tuple[object, ...] = (0, -1, 2.5, "2")
# Keyword arguments that select a mode rather than a number: not fuzzed with bad numbers.
NOT_NUMERIC = {"ignore_index", "return_weights", "standardize", "pool", "mask"}
# Annotations (strings: the losses use ``from __future__ import annotations``) of optional
# numeric hyperparameters, and a number of that type.
OPTIONAL_NUMBERS: dict[object, object] = {"float | None": 1.0, "int | None": 1}
OK_CLASSES = ("finite", "named error", "overflow")
CLASSES = (*OK_CLASSES, "silent non-finite", "unclear exception")


@dataclass(frozen=True)
class Case:
    """One fuzz input: how to build it (keyword arguments of :func:`build_call`)."""

    name: str
    label: str
    build: dict[str, object] = field(default_factory=dict)
    argument: str | None = None  # the argument a named error must name (None: any input name)


# --------------------------------------------------------------------------- building inputs


def _values(
    shape: tuple[int, ...], generator: torch.Generator, scale: float, dtype: torch.dtype
) -> Tensor:
    values = torch.randn(shape, generator=generator, dtype=torch.float64)
    largest = torch.finfo(dtype).max
    if math.isinf(scale):  # "huge": up to a sixteenth of the dtype's largest value (2e37 in f32)
        return (values.clamp(-4, 4) * (largest / 64)).to(dtype)
    return (values * scale).clamp(-largest, largest).to(dtype)  # finite inputs only


def _fresh_side(
    side: object, batch: int, generator: torch.Generator, scale: float, dtype: torch.dtype
) -> object:
    def one(tensor: Tensor) -> Tensor:
        return _values((batch, *tensor.shape[1:]), generator, scale, dtype)

    return [one(t) for t in side] if isinstance(side, list) else one(side)


def _cast_side(side: object, dtype: torch.dtype) -> object:
    return [t.to(dtype) for t in side] if isinstance(side, list) else side.to(dtype)


def _same_shapes(first: object, second: object) -> bool:
    def shapes(side: object) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in side] if isinstance(side, list) else [tuple(side.shape)]

    return shapes(first) == shapes(second)


def build_call(
    name: str,
    *,
    dtype: torch.dtype,
    seed: int = 0,
    batch: int | None = None,
    layout: str = "rows",
    scale: float = 2.0,
    kwargs: dict[str, object] | None = None,
    teacher_dtype: torch.dtype | None = None,
    label_dtype: torch.dtype = torch.long,
    rounded_to: torch.dtype | None = None,
    identical: bool = False,
    masked_classes: int = 0,
    row_mask: bool = False,
    as_float64: bool = False,
    learned_temperature: float | None = None,
    module_dtype: torch.dtype | None = None,
) -> functools.partial[Tensor]:
    """A zero-argument call of loss ``name`` on fresh inputs of the loss's signature.

    Shapes come from the template's inputs for the loss (``batch`` replaces their first dim);
    values are ``N(0, scale^2)`` draws in float64, optionally rounded to ``rounded_to``, cast to
    ``dtype`` (the teacher side to ``teacher_dtype``). ``identical`` makes the teacher a copy of
    the student (where the shapes allow), ``masked_classes`` sets that many last classes of
    every logit tensor to ``-inf`` (labels avoid them), ``row_mask`` passes a row mask.
    ``as_float64`` computes the very same values in float64 (the overflow reference).
    ``learned_temperature`` passes ``temperature`` as a 0-dim tensor that requires grad.
    Stateful losses are built from the reference's keyword arguments, in ``module_dtype``
    (default float32; float64 for float64 inputs).
    """
    spec = REFERENCES[name]
    base = make_inputs(name, layout)
    if signature_of(name) == "hidden_states":
        return _hidden_states_call(
            name,
            base,
            dtype=dtype,
            seed=seed,
            batch=batch,
            scale=scale,
            kwargs={**spec.kwargs, **(kwargs or {})},
            teacher_dtype=teacher_dtype,
            label_dtype=label_dtype,
            rounded_to=rounded_to,
            identical=identical,
            masked_classes=masked_classes,
            row_mask=row_mask,
            as_float64=as_float64,
        )
    if signature_of(name) == "self_exits":
        return _self_exits_call(
            name,
            base,
            dtype=dtype,
            seed=seed,
            batch=batch,
            scale=scale,
            kwargs={**spec.kwargs, **(kwargs or {})},
            teacher_dtype=teacher_dtype,
            label_dtype=label_dtype,
            rounded_to=rounded_to,
            identical=identical,
            masked_classes=masked_classes,
            as_float64=as_float64,
            learned_temperature=learned_temperature,
        )
    kwargs = dict(kwargs or {})
    if learned_temperature is not None:
        wide = torch.float64 if as_float64 or dtype == torch.float64 else torch.float32
        kwargs["temperature"] = torch.tensor(learned_temperature, dtype=wide, requires_grad=True)
    batch = base[0].shape[0] if isinstance(base[0], Tensor) and batch is None else batch
    if batch is None:
        batch = base[0][0].shape[0]
    generator = torch.Generator().manual_seed(seed)
    value_dtype = rounded_to or dtype
    student = _fresh_side(base[0], batch, generator, scale, value_dtype)
    inputs: list[object] = [_cast_side(student, dtype)]
    signature = signature_of(name)
    if has_teacher(name):
        side_dtype = teacher_dtype or dtype
        if identical and signature == "multi_teacher":
            teacher = [student.clone() for _ in base[1]]
        elif identical and _same_shapes(base[0], base[1]):
            teacher = student
        else:
            teacher = _fresh_side(base[1], batch, generator, scale, value_dtype)
        inputs.append(_cast_side(teacher, side_dtype))
    rows_shape = None
    if signature in LOGIT_SIGNATURES:
        logits = inputs[0]
        rows_shape, classes = logits.shape[:-1], logits.shape[-1]
        if masked_classes:
            for tensor in [inputs[0], *([inputs[1]] if has_teacher(name) else [])]:
                for part in tensor if isinstance(tensor, list) else [tensor]:
                    part[..., -masked_classes:] = float("-inf")
            classes -= masked_classes
        if signature != "logits":
            labels = torch.randint(0, classes, rows_shape, generator=generator)
            inputs.append(labels.to(label_dtype))
    if signature == "indexed":
        inputs.append(torch.arange(batch))
        contrast = base[3]
        high = int(contrast.max()) + 1
        inputs.append(torch.randint(0, high, (batch, contrast.shape[1]), generator=generator))
    if as_float64:
        inputs = [
            _cast_side(item, torch.float64)
            if isinstance(item, list) or item.is_floating_point()
            else item
            for item in inputs
        ]
    call_kwargs: dict[str, object] = {}
    if row_mask and rows_shape is not None:
        mask = torch.rand(rows_shape, generator=generator) < 0.6
        mask.view(-1)[0] = True
        call_kwargs["mask"] = mask
    if torch.float64 in (dtype, teacher_dtype) or as_float64:
        module_dtype = torch.float64
    loss = make_loss(name, {**spec.kwargs, **kwargs}, module_dtype or torch.float32)
    return functools.partial(loss, *inputs, **call_kwargs)


def _hidden_states_call(
    name: str,
    base: tuple[object, ...],
    *,
    dtype: torch.dtype,
    seed: int,
    batch: int | None,
    scale: float,
    kwargs: dict[str, object],
    teacher_dtype: torch.dtype | None,
    label_dtype: torch.dtype,
    rounded_to: torch.dtype | None,
    identical: bool,
    masked_classes: int,
    row_mask: bool,
    as_float64: bool,
) -> functools.partial[Tensor]:
    """:func:`build_call` for the ``hidden_states`` signature: per side hidden states
    ``[batch, ..., H]`` and an output weight ``[V, H]`` (the template's shapes), then labels.

    ``batch`` replaces the hidden states' first dim (the weights have no rows); ``identical``
    gives the teacher the student's hidden states and weight; ``masked_classes`` masks that
    many last vocabulary entries of both sides with a ``-inf`` output bias (the fused loss's
    logits are ``h W^T + b``), and the labels avoid them.
    """
    student_hidden, student_weight, teacher_hidden, teacher_weight, _ = base
    batch = student_hidden.shape[0] if batch is None else batch
    generator = torch.Generator().manual_seed(seed)
    value_dtype = rounded_to or dtype

    def draw(tensor: Tensor, rows: bool) -> Tensor:
        shape = (batch, *tensor.shape[1:]) if rows else tuple(tensor.shape)
        return _values(shape, generator, scale, value_dtype)

    student = [draw(student_hidden, True), draw(student_weight, False)]
    teacher = (
        [t.clone() for t in student]
        if identical
        else [draw(teacher_hidden, True), draw(teacher_weight, False)]
    )
    rows_shape = student[0].shape[:-1]
    vocab = student[1].shape[0]
    labels = torch.randint(0, vocab - masked_classes, rows_shape, generator=generator)
    side_dtype = teacher_dtype or dtype
    cast = torch.float64 if as_float64 else None
    inputs = [
        *(t.to(cast or dtype) for t in student),
        *(t.to(cast or side_dtype) for t in teacher),
        labels.to(label_dtype),
    ]
    call_kwargs: dict[str, object] = dict(kwargs)
    if masked_classes:
        for side, side_type in (("student", dtype), ("teacher", side_dtype)):
            bias = torch.zeros(vocab, dtype=cast or side_type)
            bias[-masked_classes:] = float("-inf")
            call_kwargs[f"{side}_bias"] = bias
    if row_mask:
        mask = torch.rand(rows_shape, generator=generator) < 0.6
        mask.view(-1)[0] = True
        call_kwargs["mask"] = mask
    return functools.partial(entry(name).functional, *inputs, **call_kwargs)


def _self_exits_call(
    name: str,
    base: tuple[object, ...],
    *,
    dtype: torch.dtype,
    seed: int,
    batch: int | None,
    scale: float,
    kwargs: dict[str, object],
    teacher_dtype: torch.dtype | None,
    label_dtype: torch.dtype,
    rounded_to: torch.dtype | None,
    identical: bool,
    masked_classes: int,
    as_float64: bool,
    learned_temperature: float | None,
) -> functools.partial[Tensor]:
    """:func:`build_call` for the ``self_exits`` signature: the exits' logits and features
    (the student side), the deepest exit's logits and features (the teacher side), labels.

    ``identical`` makes the deepest exit a copy of the first exit; ``masked_classes`` masks that
    many last classes of every logit tensor, and the labels avoid them.
    """
    final_logits = base[2]
    batch = final_logits.shape[0] if batch is None else batch
    generator = torch.Generator().manual_seed(seed)
    value_dtype = rounded_to or dtype
    side_dtype = teacher_dtype or dtype
    student = [_fresh_side(side, batch, generator, scale, value_dtype) for side in base[:2]]
    teacher = (
        [student[0][0].clone(), student[1][0].clone()]
        if identical
        else [_fresh_side(side, batch, generator, scale, value_dtype) for side in base[2:4]]
    )
    for logits in [*student[0], teacher[0]] if masked_classes else []:
        logits[..., -masked_classes:] = float("-inf")
    classes = final_logits.shape[-1] - masked_classes
    labels = torch.randint(0, classes, (batch,), generator=generator).to(label_dtype)
    inputs = [
        *(_cast_side(side, torch.float64 if as_float64 else dtype) for side in student),
        *(_cast_side(side, torch.float64 if as_float64 else side_dtype) for side in teacher),
        labels,
    ]
    if learned_temperature is not None:
        wide = torch.float64 if as_float64 or dtype == torch.float64 else torch.float32
        kwargs["temperature"] = torch.tensor(learned_temperature, dtype=wide, requires_grad=True)
    return functools.partial(entry(name).functional, *inputs, **kwargs)


# --------------------------------------------------------------------------- the grid


def numeric_parameters(name: str) -> dict[str, object]:
    """Keyword parameters with a numeric default (the loss's hyperparameters), and the default.

    Optional numbers (annotated ``float | None`` or ``int | None``, default None: a softcap, a
    chunk size) are hyperparameters too; for them the value is a number of that type.
    """
    loss_entry = entry(name)
    function = loss_entry.functional or loss_entry.module.__init__
    found = {}
    for parameter in inspect.signature(function).parameters.values():
        default = parameter.default
        if parameter.name in NOT_NUMERIC or isinstance(default, bool):
            continue
        if isinstance(default, int | float):
            found[parameter.name] = default
        elif default is None and parameter.annotation in OPTIONAL_NUMBERS:
            found[parameter.name] = OPTIONAL_NUMBERS[parameter.annotation]
    return found


def grid_cases(name: str) -> Iterator[Case]:
    """The deterministic grid for one loss."""
    logit = signature_of(name) in LOGIT_SIGNATURES
    for dtype_name, dtype in DTYPES.items():
        for scale_name, scale in SCALES.items():
            for identical in (False, True):
                label = f"{dtype_name} {scale_name}{' identical' if identical else ''}"
                yield Case(name, label, {"dtype": dtype, "scale": scale, "identical": identical})
        if logit:
            yield Case(
                name, f"{dtype_name} -inf masked classes", {"dtype": dtype, "masked_classes": 2}
            )
            yield Case(
                name,
                f"{dtype_name} -inf masked identical",
                {"dtype": dtype, "masked_classes": 2, "identical": True},
            )
            for mask in (False, True):
                yield Case(
                    name,
                    f"{dtype_name} tokens{' row mask' if mask else ''}",
                    {
                        "dtype": dtype,
                        "layout": "tokens",
                        "row_mask": mask and "mask" in _parameters(name),
                    },
                )
    yield from _edge_cases(name)
    for batch in (0, 1, 2):
        yield Case(name, f"batch {batch}", {"dtype": torch.float32, "batch": batch})
    if has_teacher(name):
        yield Case(
            name,
            "f32 student, f64 teacher",
            {"dtype": torch.float32, "teacher_dtype": torch.float64},
        )
    if signature_of(name) in ("labels", "logits_labels", "multi_teacher", "hidden_states"):
        for label_dtype in (torch.int32, torch.int16, torch.uint8):
            yield Case(
                name, f"labels {label_dtype}", {"dtype": torch.float32, "label_dtype": label_dtype}
            )
    parameters = numeric_parameters(name)
    if "temperature" in parameters:
        for temperature in TEMPERATURES:
            for identical in (False, True):
                yield Case(
                    name,
                    f"temperature {temperature:g}{' identical' if identical else ''}",
                    {
                        "dtype": torch.float32,
                        "kwargs": {"temperature": temperature},
                        "identical": identical,
                    },
                )
    for parameter, default in parameters.items():
        bad_values = BAD_INTS if isinstance(default, int) else BAD_FLOATS
        for value in bad_values:
            yield Case(
                name,
                f"{parameter}={value!r}",
                {"dtype": torch.float32, "kwargs": {parameter: value}},
                argument=parameter,
            )


def _edge_cases(name: str) -> Iterator[Case]:
    """Well-posed inputs that once gave NaN values or gradients (issue 22, section 4).

    Logit losses: one class left unmasked (every other class ``-inf`` on both sides: a
    constant row under standardization) and, with ``standardize=True`` where the loss has it,
    constant (all-zero) rows and ``-inf`` masking; a learned (0-dim, requires grad) temperature
    with ``-inf`` masking where the loss takes a tensor temperature; a Python int temperature.
    Stateful losses: the module cast to float16/bfloat16 with inputs of that dtype.
    """
    parameters = _parameters(name)
    if signature_of(name) in LOGIT_SIGNATURES:
        classes = make_inputs(name, "rows")[0]
        vocab = (classes[0] if isinstance(classes, list) else classes).shape[-1]
        if signature_of(name) == "hidden_states":
            vocab = make_inputs(name, "rows")[1].shape[0]
        yield Case(
            name, "one unmasked class", {"dtype": torch.float32, "masked_classes": vocab - 1}
        )
    if "standardize" in parameters:
        for dtype_name, dtype in DTYPES.items():
            for label, build in (
                ("zero rows", {"scale": 0.0}),
                ("zero rows identical", {"scale": 0.0, "identical": True}),
                ("-inf masked", {"masked_classes": 2}),
            ):
                yield Case(
                    name,
                    f"{dtype_name} standardize {label}",
                    {"dtype": dtype, "kwargs": {"standardize": True}, **build},
                )
    if "temperature" in numeric_parameters(name):
        if "Tensor" in str(_annotation(name, "temperature")):
            for masked in (0, 2):
                yield Case(
                    name,
                    f"learned temperature{' -inf masked' if masked else ''}",
                    {"dtype": torch.float32, "learned_temperature": 2.0, "masked_classes": masked},
                )
        yield Case(name, "int temperature", {"dtype": torch.float32, "kwargs": {"temperature": 3}})
    if entry(name).functional is None:
        for dtype_name in ("f16", "bf16"):
            dtype = DTYPES[dtype_name]
            yield Case(name, f"{dtype_name} module", {"dtype": dtype, "module_dtype": dtype})


def _annotation(name: str, parameter: str) -> object:
    loss_entry = entry(name)
    function = loss_entry.functional or loss_entry.module.__init__
    return inspect.signature(function).parameters[parameter].annotation


@functools.cache
def _parameters(name: str) -> frozenset[str]:
    loss_entry = entry(name)
    if loss_entry.functional is not None:
        return frozenset(inspect.signature(loss_entry.functional).parameters)
    return frozenset(
        set(inspect.signature(loss_entry.module.__init__).parameters)
        | set(inspect.signature(loss_entry.module.forward).parameters)
    )


# --------------------------------------------------------------------------- classification


def _names_argument(message: str, case: Case) -> bool:
    if case.argument is not None:
        return case.argument in message
    return any(parameter in message for parameter in _parameters(case.name))


def _value_and_gradients(case: Case, **extra: object) -> tuple[Tensor, list[Tensor | None]]:
    """The loss of ``case`` and the gradients of its sum w.r.t. every floating-point input
    (the learned temperature included); the inputs are leaves, so each gets one."""
    call = build_call(case.name, **case.build, **extra)
    inputs: dict[int, Tensor] = {}
    for item in (*call.args, *call.keywords.values()):
        for tensor in item if isinstance(item, list) else [item]:
            if isinstance(tensor, Tensor) and tensor.is_floating_point():
                inputs[id(tensor)] = tensor.requires_grad_()
    value = call()
    if not isinstance(value, Tensor) or not value.requires_grad:
        return value, []
    return value, list(torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True))


def _non_finite(gradients: list[Tensor | None]) -> list[int]:
    return [i for i, g in enumerate(gradients) if g is not None and not bool(g.isfinite().all())]


def _classify_gradients(case: Case, gradients: list[Tensor | None]) -> tuple[str, str]:
    """A finite value's gradients: ``finite``, ``overflow`` (the float64 gradient is beyond
    the gradient dtype's range) or ``silent non-finite``."""
    bad = _non_finite(gradients)
    if not bad:
        return "finite", ""
    shown = f"gradient {bad[0]}: {gradients[bad[0]].flatten()[:3].tolist()}"
    if case.build.get("dtype") == torch.float64:
        huge = math.isinf(case.build.get("scale", 2.0))
        return ("overflow" if huge else "silent non-finite"), f"{shown} (float64 input)"
    _, references = _value_and_gradients(case, as_float64=True)
    for index in bad:
        reference = references[index]
        if reference is None or bool(reference.isnan().any()):
            return "silent non-finite", f"{shown} (float64 gradient NaN)"
        if not bool(reference.abs().max() > torch.finfo(gradients[index].dtype).max):
            return "silent non-finite", f"{shown} (float64: {reference.flatten()[:3].tolist()})"
    return "overflow", shown


def classify(case: Case) -> tuple[str, str]:
    """Run one case; return its outcome class and a short description.

    A finite value is classified further by its gradients (:func:`_classify_gradients`).
    """
    try:
        value, gradients = _value_and_gradients(case)
    except (ValueError, TypeError) as error:
        if _names_argument(str(error), case):
            return "named error", str(error)[:120]
        return "unclear exception", f"{type(error).__name__}: {str(error)[:200]}"
    except Exception as error:
        return "unclear exception", f"{type(error).__name__}: {str(error)[:200]}"
    if not isinstance(value, Tensor):
        return "unclear exception", f"returned {type(value).__name__}, not a tensor"
    if bool(torch.isfinite(value).all()):
        return _classify_gradients(case, gradients)
    shown = f"{value.flatten()[:3].tolist()}"
    if case.build.get("masked_classes"):
        return "silent non-finite", shown
    if value.dtype == torch.float64 or case.build.get("dtype") == torch.float64:
        # No wider reference: only values near float64's largest may overflow.
        huge = math.isinf(case.build.get("scale", 2.0))
        return ("overflow" if huge else "silent non-finite"), f"{shown} (float64 input)"
    try:
        with torch.no_grad():
            reference = build_call(case.name, **case.build, as_float64=True)()
    except Exception as error:
        return "silent non-finite", f"{shown} (float64 reference failed: {error})"
    largest = torch.finfo(value.dtype).max
    magnitude = reference.abs().max()
    detail = f"{shown} (float64: {reference.flatten()[:3].tolist()})"
    if bool(torch.isnan(reference).any()):
        return "silent non-finite", detail
    if bool(magnitude > largest) or _row_out_of_range(case, largest):
        return "overflow", detail
    return "silent non-finite", detail


def _row_out_of_range(case: Case, largest: float) -> bool:
    """Whether a per-row value (``reduction="none"``, in float64) is beyond ``largest``: the
    rows are in the result dtype, so their mean cannot be formed even if it is in range."""
    if "reduction" not in _parameters(case.name):
        return False
    kwargs = {**(case.build.get("kwargs") or {}), "reduction": "none"}
    try:
        rows = build_call(case.name, **{**case.build, "kwargs": kwargs}, as_float64=True)()
    except (ValueError, TypeError):
        return False
    return bool(rows.abs().max() > largest)


def run_grid(names: list[str] | None = None) -> dict[str, Counter[str]]:
    """Classify every grid case; ``{name: Counter(class -> count)}``, defects printed."""
    counts: dict[str, Counter[str]] = {}
    for name in names or NAMES:
        counts[name] = Counter()
        for case in grid_cases(name):
            outcome, detail = classify(case)
            counts[name][outcome] += 1
            if outcome not in OK_CLASSES:
                print(f"  {name} [{case.label}]: {outcome}: {detail}")
    return counts


def format_counts(counts: dict[str, Counter[str]]) -> str:
    """A table of outcome counts per loss, and the totals."""
    header = f"{'loss':<18}" + "".join(f"{c:>19}" for c in CLASSES)
    lines = [header]
    total: Counter[str] = Counter()
    for name, counter in counts.items():
        total.update(counter)
        lines.append(f"{name:<18}" + "".join(f"{counter[c]:>19}" for c in CLASSES))
    lines.append(f"{'total':<18}" + "".join(f"{total[c]:>19}" for c in CLASSES))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the tests


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHKD_COMPILE", "0")


@pytest.mark.parametrize("name", NAMES)
def test_grid_has_no_silent_non_finite_or_unclear_exception(name: str) -> None:
    failures = []
    counter: Counter[str] = Counter()
    for case in grid_cases(name):
        outcome, detail = classify(case)
        counter[outcome] += 1
        if outcome not in OK_CLASSES:
            failures.append(f"[{case.label}] {outcome}: {detail}")
    print(f"\n{name}: " + ", ".join(f"{c}={counter[c]}" for c in CLASSES))
    assert not failures, "\n".join(failures)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(NAMES),
    dtype=st.sampled_from(list(DTYPES.values())),
    log_scale=st.integers(min_value=-40, max_value=40),
    batch=st.integers(min_value=1, max_value=5),
    identical=st.booleans(),
    temperature=st.floats(min_value=1e-3, max_value=1e6),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_hypothesis_search(name, dtype, log_scale, batch, identical, temperature, seed) -> None:
    build: dict[str, object] = {
        "dtype": dtype,
        "scale": 10.0**log_scale,
        "batch": batch,
        "identical": identical,
        "seed": seed,
    }
    if "temperature" in numeric_parameters(name):
        build["kwargs"] = {"temperature": temperature}
    outcome, detail = classify(Case(name, "hypothesis", build))
    assert outcome in OK_CLASSES, f"{name} {build}: {outcome}: {detail}"
