"""The test template every registered loss must pass.

Parametrized over ``torchkd.losses.available()``: a loss is tested the day it is registered.
Inputs are built from the loss's registry signature (``entry(name).signature``); the loss's
entry in ``references.py`` supplies its brute-force reference, hyperparameters, supported
reductions and any check that does not apply (with the reason). Checks:

- a reference exists (a registered loss without one fails here);
- value against the reference, on ``[B, C]`` and, for logit losses, ``[B, L, V]``;
- float64 ``gradcheck`` w.r.t. the student (and the teacher unless the entry says no);
- module == functional, and the module's repr shows the hyperparameters;
- zero loss and zero student gradient when student equals teacher;
- every supported reduction against the reference; unsupported ones raise ``ValueError``;
- float16/bfloat16 inputs: finite, and close to float32 on the same rounded inputs
  (float16: rtol = atol = 5e-3, bfloat16: rtol = atol = 3e-2: room for a result rounded to the
  half type, whose relative spacing is 1e-3 and 8e-3; far below a wrong formula's error);
- logit losses only: logits of size ~1e4 give finite values and gradients; a mask selects
  rows (NaN in masked rows does not leak; their gradient is 0); an all-False mask gives
  exactly 0 with a zero gradient; ``ignore_index`` rows are left out;
- bad inputs raise ``ValueError``/``TypeError`` (shapes, labels, mask, temperature, reduction).

Losses with the ``hidden_states`` signature (fused with the output projection) get hidden
states and output weights for each side (hidden sizes 6 and 7, vocabulary C); every check then
treats the side as that pair, and only the hidden states and labels have rows to mask.

Shapes are tiny (B=4, C=5, L=3) so the whole template runs in seconds.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from torchkd.calls import CALLS, Example, call_for
from torchkd.losses import available, entry

from .references import REFERENCES, Reference

BATCH, CLASSES, LENGTH, TEACHERS, NUM_DATA = 4, 5, 3, 3, 16
LOGIT_SIGNATURES = tuple(name for name, call in CALLS.items() if call.token_rows)
WITH_LABELS = ("labels", "logits_labels", "multi_teacher", "hidden_states")
# "hidden_states": (student_hidden, student_weight, teacher_hidden, teacher_weight, labels); a
# side is its hidden states and output weight, and only the hidden states (and labels) have rows.
STUDENT_HIDDEN, TEACHER_HIDDEN = 6, 7
ALL_REDUCTIONS = ("batchmean", "sum", "mean", "none")
NAMES = available()


# --------------------------------------------------------------------------- helpers


def signature_of(name: str) -> str:
    return entry(name).signature


def is_logit(name: str) -> bool:
    return signature_of(name) in LOGIT_SIGNATURES


def has_teacher(name: str) -> bool:
    return call_for(signature_of(name)).reads_teacher


def parameters_of(name: str) -> set[str]:
    """Names the loss accepts: its functional's, or its module's ``__init__`` and ``forward``."""
    loss_entry = entry(name)
    if loss_entry.functional is not None:
        return set(inspect.signature(loss_entry.functional).parameters)
    return set(inspect.signature(loss_entry.module.__init__).parameters) | set(
        inspect.signature(loss_entry.module.forward).parameters
    )


def layouts(name: str) -> list[str]:
    return ["rows", "tokens"] if is_logit(name) else ["default"]


def rows_shape(layout: str) -> tuple[int, ...]:
    return (BATCH, LENGTH) if layout == "tokens" else (BATCH,)


def side_slots(name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions of the student's and the teacher's inputs."""
    call = call_for(signature_of(name))
    return call.student_slots, call.teacher_slots


def row_slots(name: str, inputs: Sequence[object]) -> tuple[int, ...]:
    """Positions of the inputs whose leading dims are the rows (all, except output weights)."""
    slots = call_for(signature_of(name)).row_slots
    return tuple(range(len(inputs))) if slots is None else slots


def side_of(name: str, inputs: Sequence[object], side: int) -> list[Tensor]:
    """The student's (``side=0``) or the teacher's (``side=1``) tensors."""
    return [t for slot in side_slots(name)[side] for t in tensors_of(inputs[slot])]


def select(name: str, inputs: Sequence[object], keep: Tensor) -> list[object]:
    """``inputs`` with only the rows selected by ``keep`` (lists: each member)."""
    slots = row_slots(name, inputs)

    def selected(item: object) -> object:
        return [t[keep] for t in item] if isinstance(item, list) else item[keep]

    return [selected(item) if i in slots else item for i, item in enumerate(inputs)]


def spec_of(name: str) -> Reference:
    if name not in REFERENCES:
        pytest.skip(f"{name!r} has no reference (test_every_loss_has_a_reference fails)")
    return REFERENCES[name]


def skip_if_declared(spec: Reference, check: str) -> None:
    if check in spec.skip:
        pytest.skip(spec.skip[check])


def make_inputs(
    name: str, layout: str = "rows", dtype: torch.dtype = torch.float64, scale: float = 2.0
) -> tuple[object, ...]:
    """Positional inputs for the loss's signature (its call convention's example inputs); the
    same values for every dtype."""
    generator = torch.Generator().manual_seed(0)
    spec = REFERENCES.get(name)
    if spec is not None and spec.make_inputs is not None:
        return spec.make_inputs(generator, dtype)
    example = Example(
        generator,
        dtype,
        scale,
        layout,
        batch=BATCH,
        classes=CLASSES,
        length=LENGTH,
        teachers=TEACHERS,
        num_data=NUM_DATA,
        student_hidden=STUDENT_HIDDEN,
        teacher_hidden=TEACHER_HIDDEN,
    )
    return call_for(signature_of(name)).example_inputs(example)


def make_loss(
    name: str, kwargs: dict[str, object], dtype: torch.dtype = torch.float64
) -> Callable[..., object]:
    """The functional with ``kwargs`` bound, or (stateful losses) the module built from them.

    A module's parameters and buffers are seeded and cast to ``dtype`` (float64 for the exact
    checks; float32, as in mixed-precision training, for the low-precision and extreme checks).
    """
    loss_entry = entry(name)
    if loss_entry.functional is not None:
        return functools.partial(loss_entry.functional, **kwargs)
    torch.manual_seed(0)
    return loss_entry.module(**kwargs).to(dtype)


def to_numpy(value: object) -> object:
    if isinstance(value, Tensor):
        value = value.detach()
        return value.double().numpy() if value.is_floating_point() else value.numpy()
    if isinstance(value, list | tuple):
        return [to_numpy(item) for item in value]
    return value


def reference_value(
    name: str, loss: Callable[..., object], inputs: Sequence[object], **kwargs: object
) -> object:
    """The reference on ``inputs`` (call it before the loss: stateful losses may update)."""
    if entry(name).functional is None:
        kwargs["module"] = loss
    return spec_of(name).fn(*[to_numpy(item) for item in inputs], **kwargs)


def tensors_of(side: object) -> list[Tensor]:
    return [side] if isinstance(side, Tensor) else list(side)


def with_sides(
    name: str, inputs: Sequence[object], student: list[Tensor], teacher: list[Tensor] | None
) -> tuple[object, ...]:
    """``inputs`` with the student (and teacher) side replaced, keeping tensor-or-list form."""
    rebuilt = list(inputs)
    for slots, tensors in zip(side_slots(name), (student, teacher), strict=True):
        if tensors is None:
            continue
        remaining = iter(tensors)  # side_of's order: each slot's tensor, or its list's members
        for slot in slots:
            if isinstance(inputs[slot], Tensor):
                rebuilt[slot] = next(remaining)
            else:
                rebuilt[slot] = [next(remaining) for _ in inputs[slot]]
        assert next(remaining, None) is None, "more tensors than the side's slots hold"
    return tuple(rebuilt)


def assert_close(actual: object, expected: object, **tolerances: float) -> None:
    actual_tensor = torch.as_tensor(actual).detach().double()
    expected_tensor = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    assert actual_tensor.shape == expected_tensor.shape, (
        actual_tensor.shape,
        expected_tensor.shape,
    )
    torch.testing.assert_close(actual_tensor, expected_tensor, **tolerances)


def variant_cases() -> list[object]:
    cases = []
    for name in NAMES:
        spec = REFERENCES.get(name)
        count = 1 if spec is None else 1 + len(spec.variants)
        for layout in layouts(name):
            cases += [
                pytest.param(name, layout, i, id=f"{name}-{layout}-{i}") for i in range(count)
            ]
    return cases


def layout_cases(logit_only: bool = False, needs: str | None = None) -> list[object]:
    return [
        pytest.param(name, layout, id=f"{name}-{layout}")
        for name in NAMES
        if (is_logit(name) or not logit_only) and (needs is None or needs in parameters_of(name))
        for layout in layouts(name)
    ]


def kwargs_of(spec: Reference, variant: int) -> dict[str, object]:
    return dict(spec.kwargs) if variant == 0 else {**spec.kwargs, **spec.variants[variant - 1]}


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_has_a_reference(name: str) -> None:
    assert name in REFERENCES, (
        f"registered loss {name!r} has no brute-force reference: add one to "
        "tests/losses/references.py (REFERENCES[name] = Reference(fn, kwargs))"
    )


def test_every_reference_names_a_registered_loss() -> None:
    stale = sorted(set(REFERENCES) - set(NAMES))
    assert not stale, f"references for unregistered losses: {stale}"


@pytest.mark.parametrize(("name", "layout", "variant"), variant_cases())
def test_value_matches_reference(name: str, layout: str, variant: int) -> None:
    spec = spec_of(name)
    kwargs = kwargs_of(spec, variant)
    inputs = make_inputs(name, layout)
    loss = make_loss(name, kwargs)
    expected = reference_value(name, loss, inputs, **kwargs)
    assert_close(loss(*inputs), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name: str) -> None:
    spec = spec_of(name)
    skip_if_declared(spec, "gradcheck")
    inputs = make_inputs(name)
    loss = make_loss(name, spec.kwargs)
    student = [t.clone().requires_grad_() for t in side_of(name, inputs, 0)]
    differentiate_teacher = has_teacher(name) and spec.teacher_grad
    teacher = (
        [t.clone().requires_grad_() for t in side_of(name, inputs, 1)]
        if differentiate_teacher
        else []
    )

    def function(*tensors: Tensor) -> Tensor:
        student_part, teacher_part = list(tensors[: len(student)]), list(tensors[len(student) :])
        return loss(*with_sides(name, inputs, student_part, teacher_part or None))

    assert torch.autograd.gradcheck(function, (*student, *teacher))


@pytest.mark.parametrize("name", NAMES)
def test_module_matches_functional(name: str) -> None:
    spec = spec_of(name)
    loss_entry = entry(name)
    if loss_entry.functional is None:
        pytest.skip("stateful loss: module only")
    inputs = make_inputs(name)
    for variant in range(1 + len(spec.variants)):
        kwargs = kwargs_of(spec, variant)
        module = loss_entry.module(**kwargs)
        assert_close(module(*inputs), loss_entry.functional(*inputs, **kwargs), rtol=0, atol=0)
        for key in kwargs:
            assert f"{key}=" in repr(module), f"{key} missing from {module!r}"


@pytest.mark.parametrize(("name", "layout"), layout_cases())
def test_zero_when_student_equals_teacher(name: str, layout: str) -> None:
    spec = spec_of(name)
    if not has_teacher(name):
        pytest.skip("no teacher")
    skip_if_declared(spec, "zero_at_equal")
    inputs = make_inputs(name, layout)
    student = [t.clone().requires_grad_() for t in side_of(name, inputs, 0)]
    if signature_of(name) == "multi_teacher":
        teacher = [student[0].detach().clone() for _ in tensors_of(inputs[1])]
    else:
        teacher = [t.detach().clone() for t in student]
    value = make_loss(name, spec.kwargs)(*with_sides(name, inputs, student, teacher))
    # float64 inputs: rounding leaves ~1e-15; the 1e-5 is for the losses' stabilising epsilons,
    # not for rounding (dist's correlation eps leaves 1.5e-6 at equality, pkt's 1e-8 gradients)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-5)
    gradients = torch.autograd.grad(value, student)
    for gradient in gradients:
        assert_close(gradient, np.zeros(gradient.shape), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "layout"), layout_cases())
def test_reductions(name: str, layout: str) -> None:
    spec = spec_of(name)
    if not spec.reductions:
        pytest.skip("the reference declares only the default reduction")
    inputs = make_inputs(name, layout)
    for reduction in spec.reductions:
        kwargs = {**spec.kwargs, "reduction": reduction}
        loss = make_loss(name, kwargs)
        expected = reference_value(name, loss, inputs, **kwargs)
        value = loss(*inputs)
        if reduction == "none" and is_logit(name):
            assert tuple(value.shape) == rows_shape(layout)
        assert_close(value, expected, rtol=1e-7, atol=1e-9)
    if is_logit(name):
        for reduction in set(ALL_REDUCTIONS) - set(spec.reductions):
            with pytest.raises(ValueError, match="reduction"):
                make_loss(name, {**spec.kwargs, "reduction": reduction})(*inputs)


def as_float32(item: object) -> object:
    if isinstance(item, list):
        return [as_float32(part) for part in item]
    if isinstance(item, Tensor) and item.is_floating_point():
        return item.float()
    return item


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_close_to_float32(name: str, dtype: torch.dtype) -> None:
    spec = spec_of(name)
    skip_if_declared(spec, "low_precision")
    tolerance = {torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    half_inputs = make_inputs(name, dtype=dtype)
    float_inputs = [as_float32(item) for item in half_inputs]
    student = [t.clone().requires_grad_() for t in side_of(name, half_inputs, 0)]
    value = make_loss(name, spec.kwargs, torch.float32)(
        *with_sides(name, half_inputs, student, None)
    )
    expected = make_loss(name, spec.kwargs, torch.float32)(*float_inputs)
    assert torch.isfinite(value).all()
    assert_close(value.float(), expected.detach(), rtol=tolerance, atol=tolerance)
    value.float().sum().backward()
    for tensor in student:
        assert tensor.grad is not None and tensor.grad.dtype == dtype
        assert torch.isfinite(tensor.grad).all()


@pytest.mark.parametrize(("name", "layout"), layout_cases(logit_only=True))
def test_extreme_logits_stay_finite(name: str, layout: str) -> None:
    spec = spec_of(name)
    inputs = make_inputs(name, layout, dtype=torch.float32, scale=1e4)
    student = [t.clone().requires_grad_() for t in side_of(name, inputs, 0)]
    teacher = (
        [t.clone().requires_grad_() for t in side_of(name, inputs, 1)]
        if has_teacher(name)
        else None
    )
    value = make_loss(name, spec.kwargs, torch.float32)(*with_sides(name, inputs, student, teacher))
    assert torch.isfinite(value).all(), value
    value.sum().backward()
    for tensor in student + (teacher or []):
        assert torch.isfinite(tensor.grad).all()


def masked_inputs(
    name: str, layout: str, keep: Tensor
) -> tuple[tuple[object, ...], list[Tensor], list[Tensor] | None]:
    """Inputs whose unselected rows are NaN, with gradients tracked on both sides."""
    inputs = make_inputs(name, layout)
    slots = row_slots(name, inputs)

    def poisoned(tensor: Tensor, slot: int) -> Tensor:
        if slot not in slots:  # an output weight: no rows
            return tensor.clone().requires_grad_()
        return tensor.masked_fill(~keep.unsqueeze(-1), float("nan")).requires_grad_()

    def side(index: int) -> list[Tensor]:
        return [
            poisoned(t, slot) for slot in side_slots(name)[index] for t in tensors_of(inputs[slot])
        ]

    student = side(0)
    teacher = side(1) if has_teacher(name) else None
    return with_sides(name, inputs, student, teacher), student, teacher


def row_tensors(name: str, tensors: list[Tensor]) -> list[Tensor]:
    """The tensors of one side that have rows (a ``hidden_states`` side: its hidden states)."""
    return tensors[:1] if signature_of(name) == "hidden_states" else tensors


@pytest.mark.parametrize(("name", "layout"), layout_cases(logit_only=True, needs="mask"))
def test_all_masked_is_zero_with_zero_gradient(name: str, layout: str) -> None:
    spec = spec_of(name)
    keep = torch.zeros(rows_shape(layout), dtype=torch.bool)
    for reduction in spec.reductions or (None,):
        kwargs = dict(spec.kwargs) if reduction is None else {**spec.kwargs, "reduction": reduction}
        inputs, student, teacher = masked_inputs(name, layout, keep)
        value = make_loss(name, kwargs)(*inputs, mask=keep)
        assert (value == 0).all(), (reduction, value)
        value.sum().backward()
        for tensor in student:
            assert tensor.grad is not None and (tensor.grad == 0).all(), reduction
        for tensor in teacher or []:  # a teacher the loss never touched has no gradient
            assert tensor.grad is None or (tensor.grad == 0).all(), reduction


@pytest.mark.parametrize(("name", "layout"), layout_cases(logit_only=True, needs="mask"))
def test_mask_selects_rows(name: str, layout: str) -> None:
    spec = spec_of(name)
    keep = torch.tensor([True, False, True, True])
    if layout == "tokens":
        keep = torch.tensor(
            [[True, True, False], [False, False, False], [True, False, True], [False, True, True]]
        )
    inputs, student, teacher = masked_inputs(name, layout, keep)
    selected = select(name, make_inputs(name, layout), keep)
    loss = make_loss(name, spec.kwargs)
    expected = reference_value(name, loss, selected, **spec.kwargs)
    value = loss(*inputs, mask=keep)
    assert_close(value, expected, rtol=1e-7, atol=1e-9)
    value.backward()
    for tensor in student + (teacher or []):
        assert torch.isfinite(tensor.grad).all()
    for tensor in row_tensors(name, student) + row_tensors(name, teacher or []):
        assert (tensor.grad[~keep] == 0).all()


@pytest.mark.parametrize(("name", "layout"), layout_cases(logit_only=True, needs="ignore_index"))
def test_ignore_index_rows_are_left_out(name: str, layout: str) -> None:
    spec = spec_of(name)
    inputs = make_inputs(name, layout)
    labels = inputs[-1].clone()
    ignored = torch.zeros(labels.shape, dtype=torch.bool)
    ignored.view(-1)[1::3] = True
    labels[ignored] = -100
    keep = ~ignored
    kept = select(name, inputs, keep)
    loss = make_loss(name, spec.kwargs)
    expected = reference_value(name, loss, kept, **spec.kwargs)
    assert_close(loss(*inputs[:-1], labels), expected, rtol=1e-7, atol=1e-9)


def bad_input_cases() -> list[object]:
    cases = []
    for name in NAMES:
        signature, parameters = signature_of(name), parameters_of(name)
        names = ["integer_student", "bad_batch"]
        if has_teacher(name) and is_logit(name):
            names.append("class_mismatch")
        if signature in WITH_LABELS:
            names += ["label_too_large", "label_negative", "labels_shape", "float_labels"]
        if "mask" in parameters and is_logit(name):
            names += ["mask_shape", "mask_dtype"]
        if "temperature" in parameters:
            names += ["temperature_zero", "temperature_negative"]
        if "reduction" in parameters and is_logit(name):
            names.append("unknown_reduction")
        if signature == "multi_teacher":
            names += ["no_teachers", "teachers_differ"]
        cases += [pytest.param(name, case, id=f"{name}-{case}") for case in names]
    return cases


@pytest.mark.parametrize(("name", "case"), bad_input_cases())
def test_bad_inputs_raise(name: str, case: str) -> None:
    spec = spec_of(name)
    skip_if_declared(spec, f"bad_inputs:{case}")
    inputs = list(make_inputs(name))
    kwargs = dict(spec.kwargs)
    call_kwargs: dict[str, object] = {}
    error: type[Exception] = ValueError
    student_side = side_of(name, inputs, 0)
    hidden_states = signature_of(name) == "hidden_states"
    if case == "integer_student":
        error = TypeError
        inputs = list(with_sides(name, inputs, [t.long() for t in student_side], None))
    elif case == "bad_batch":
        with_rows = row_tensors(name, student_side)
        shorter = [t[1:] for t in with_rows] + student_side[len(with_rows) :]
        inputs = list(with_sides(name, inputs, shorter, None))
    elif case == "class_mismatch" and hidden_states:  # one more vocabulary row in the teacher
        teacher_hidden, teacher_weight = side_of(name, inputs, 1)
        wider = torch.cat([teacher_weight, teacher_weight[:1]], dim=0)
        inputs = list(with_sides(name, inputs, student_side, [teacher_hidden, wider]))
    elif case == "class_mismatch":
        wider = [torch.cat([t, t[..., :1]], dim=-1) for t in tensors_of(inputs[1])]
        inputs[1] = with_sides(name, inputs, student_side, wider)[1]
    elif case in ("label_too_large", "label_negative"):
        inputs[-1] = inputs[-1].clone()
        inputs[-1][0] = CLASSES if case == "label_too_large" else -2
    elif case == "labels_shape":
        inputs[-1] = torch.zeros(BATCH + 1, dtype=torch.long)
    elif case == "float_labels":
        error = TypeError
        inputs[-1] = inputs[-1].double()
    elif case == "mask_shape":
        call_kwargs["mask"] = torch.ones(BATCH + 1, dtype=torch.bool)
    elif case == "mask_dtype":
        error = TypeError
        call_kwargs["mask"] = torch.ones(BATCH)
    elif case in ("temperature_zero", "temperature_negative"):
        kwargs["temperature"] = 0.0 if case == "temperature_zero" else -1.0
    elif case == "unknown_reduction":
        kwargs["reduction"] = "average"
    elif case == "no_teachers":
        inputs[1] = []
    elif case == "teachers_differ":
        inputs[1] = [inputs[1][0], inputs[1][1][..., :-1]]
    with pytest.raises(error):
        make_loss(name, kwargs)(*inputs, **call_kwargs)
