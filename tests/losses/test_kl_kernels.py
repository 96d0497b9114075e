"""The KL-family kernels of ``torchkd.losses.kl`` and the logit losses built on them.

The per-loss template (``test_template.py``) checks every registered loss against brute-force
references; this file checks the kernel itself: closed-form gradients against autograd through
the formula, the eager/compiled/autograd paths against each other, numerics (half precision,
huge and ``-inf`` logits), temperatures (per row, learned), the compile policy and errors.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from tolerances import FLOAT32_EPS, divergence_tolerance
from torch import Tensor

from torchkd.losses import (
    _compile,
    hinton_loss,
    jsd_loss,
    kd_loss,
    kl,
    ls_kd_loss,
    reverse_kl_loss,
    soft_ce_loss,
    standardize_logits,
)

KINDS = ("forward_kl", "reverse_kl", "soft_ce", "jsd")
BETA = 0.3


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")


def logits(
    *shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 2.0
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def formula_rows(
    kind: str, student: Tensor, teacher: Tensor, temperature: float | Tensor, beta: float = BETA
) -> Tensor:
    """The divergences written the textbook way (probabilities, no closed forms), x T^2."""
    column = temperature.unsqueeze(-1) if isinstance(temperature, Tensor) else temperature
    p_student = torch.softmax(student / column, dim=-1)
    p_teacher = torch.softmax(teacher / column, dim=-1)

    def kl_div(p: Tensor, q: Tensor) -> Tensor:
        return (p * (p.log() - q.log())).sum(-1)

    if kind == "forward_kl":
        rows = kl_div(p_teacher, p_student)
    elif kind == "reverse_kl":
        rows = kl_div(p_student, p_teacher)
    elif kind == "soft_ce":
        rows = -(p_teacher * p_student.log()).sum(-1)
    else:
        mixture = beta * p_teacher + (1 - beta) * p_student
        rows = beta * kl_div(p_teacher, mixture) + (1 - beta) * kl_div(p_student, mixture)
    squared = temperature.square() if isinstance(temperature, Tensor) else temperature**2
    return rows * squared


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_row", [False, True], ids=["scalar_T", "row_T"])
def test_closed_form_gradients_match_autograd_of_the_formula(kind: str, per_row: bool) -> None:
    student = logits(5, 7, seed=0).requires_grad_()
    teacher = logits(5, 7, seed=1).requires_grad_()
    temperature = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64) if per_row else 3.0
    weights = logits(5, seed=2)  # a non-uniform upstream gradient per row
    rows = kl.divergence_rows(kind, student, teacher, temperature, beta=BETA)
    expected = formula_rows(kind, student, teacher, temperature)
    torch.testing.assert_close(rows, expected, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((rows * weights).sum(), (student, teacher))
    want = torch.autograd.grad((expected * weights).sum(), (student, teacher))
    for got_gradient, want_gradient in zip(got, want, strict=True):
        torch.testing.assert_close(got_gradient, want_gradient, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_student_and_teacher(kind: str) -> None:
    student = logits(3, 4, seed=3).requires_grad_()
    teacher = logits(3, 4, seed=4).requires_grad_()
    temperature = torch.tensor([1.0, 2.0, 0.7], dtype=torch.float64)

    def function(student: Tensor, teacher: Tensor) -> Tensor:
        return kl.divergence_rows(kind, student, teacher, temperature, beta=BETA)

    assert torch.autograd.gradcheck(function, (student, teacher))
    assert torch.autograd.gradcheck(lambda s: function(s, teacher.detach()), (student,))


def test_backward_with_retained_graph_and_scaled_output() -> None:
    student = logits(4, 6, seed=5).requires_grad_()
    teacher = logits(4, 6, seed=6)
    loss = kd_loss(student, teacher, temperature=2.0)
    first = torch.autograd.grad(3.0 * loss, student, retain_graph=True)[0]
    second = torch.autograd.grad(-1.0 * loss, student)[0]
    reference = torch.autograd.grad(
        3.0 * formula_rows("forward_kl", student, teacher, 2.0).mean(), student
    )[0]
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, -reference / 3.0)


def test_no_gradient_work_without_grad() -> None:
    student, teacher = logits(4, 6, seed=7), logits(4, 6, seed=8)
    with torch.no_grad():
        value = kd_loss(student.requires_grad_(), teacher)
    assert value.grad_fn is None
    expected = formula_rows("forward_kl", student.detach(), teacher, 1.0).mean()
    torch.testing.assert_close(value, expected)


# --------------------------------------------------------------------------- temperatures


def test_per_row_temperature_equals_row_by_row_calls() -> None:
    student, teacher = logits(2, 3, 5, seed=9), logits(2, 3, 5, seed=10)
    temperature = torch.tensor([[1.0, 2.0, 4.0], [0.5, 3.0, 1.5]], dtype=torch.float64)
    rows = kd_loss(student, teacher, temperature=temperature, reduction="none")
    for index in range(6):
        i, j = divmod(index, 3)
        single = kd_loss(
            student[i, j : j + 1], teacher[i, j : j + 1], temperature=float(temperature[i, j])
        )
        torch.testing.assert_close(rows[i, j], single)


@pytest.mark.parametrize("kind", KINDS)
def test_learned_temperature_gets_the_autograd_gradient(kind: str) -> None:
    student, teacher = logits(4, 6, seed=11).requires_grad_(), logits(4, 6, seed=12)
    temperature = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    rows = kl.divergence_rows(kind, student, teacher, temperature, beta=BETA)
    got = torch.autograd.grad(rows.sum(), (student, temperature))
    reference_temperature = temperature.detach().clone().requires_grad_()
    expected = formula_rows(kind, student, teacher, reference_temperature)
    want = torch.autograd.grad(expected.sum(), (student, reference_temperature))
    assert got[1].abs() > 0
    for got_gradient, want_gradient in zip(got, want, strict=True):
        torch.testing.assert_close(got_gradient, want_gradient)


def test_zero_dim_temperature_tensor_equals_float() -> None:
    student, teacher = logits(3, 5, seed=13), logits(3, 5, seed=14)
    torch.testing.assert_close(
        kd_loss(student, teacher, temperature=torch.tensor(3.0)),
        kd_loss(student, teacher, temperature=3.0),
    )


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_computes_in_float32(kind: str, dtype: torch.dtype) -> None:
    student = logits(6, 9, seed=15, dtype=dtype).requires_grad_()
    teacher = logits(6, 9, seed=16, dtype=dtype)
    student32 = student.detach().float().requires_grad_()
    rows = kl.divergence_rows(kind, student, teacher, 2.0, beta=BETA)
    rows32 = kl.divergence_rows(kind, student32, teacher.float(), 2.0, beta=BETA)
    assert rows.dtype == torch.float32
    # the same rounded inputs: each float32 result within its error bound of the exact one
    bound = divergence_tolerance(
        student.double(), teacher.double(), temperature=2.0, divergence=kind, beta=BETA, scale=4.0
    )
    torch.testing.assert_close(rows, rows32, rtol=0, atol=2 * bound.row)
    rows.sum().backward()
    rows32.sum().backward()
    assert student.grad.dtype == dtype
    # both float32 gradients of the sum (N times the mean's bound), then the half one rounded
    # to its dtype: half an ulp relative, or half a subnormal spacing near 0
    info = torch.finfo(dtype)
    atol = 2 * len(student) * bound.logits + info.smallest_normal * info.eps / 2
    torch.testing.assert_close(student.grad.float(), student32.grad, rtol=info.eps / 2, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_huge_logits_stay_finite(kind: str) -> None:
    student = logits(4, 8, seed=17, dtype=torch.float32, scale=1e4).requires_grad_()
    teacher = logits(4, 8, seed=18, dtype=torch.float32, scale=1e4).requires_grad_()
    rows = kl.divergence_rows(kind, student, teacher, 1.0, beta=BETA)
    rows.sum().backward()
    assert torch.isfinite(rows).all()
    assert torch.isfinite(student.grad).all() and torch.isfinite(teacher.grad).all()
    # the probability formula underflows to nan at these logits: the float64 kernel is the
    # reference (float64 rounding is 2^29 times finer than the bound)
    expected = kl.divergence_rows(kind, student.double(), teacher.double(), 1.0, beta=BETA)
    assert torch.isfinite(expected).all()
    bound = huge_logit_row_tolerance(student, teacher)
    assert ((rows.double() - expected).abs() <= bound).all(), (rows, expected, bound)


def huge_logit_row_tolerance(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-row float32 bound of a divergence of logits ``a`` (student), ``b`` (teacher) at
    ``T = 1``, class by class rather than by ``max |a|`` (``divergence_tolerance``'s form, which
    at ``|a| ~ 1e4`` is larger than the rows).

    ``log_softmax`` subtracts the row's maximum first, so ``log q_c`` is off by at most
    ``e_c = ε (|b_c − max b| + V + 2 + log V)`` (the dominant class's error is small; the
    others carry weights ``e^{−|b_c − max b|}``), ``log p_c`` by ``f_c`` likewise. With
    ``d_c = log q_c − log p_c`` (every log-ratio of the four divergences, JSD's ``log(q/m)``
    and ``log(p/m)`` included, is at most ``|d_c|``), weights ``w ∈ {q, p}``: each term
    ``w_c r_c`` is off by ``w_c (e_c + f_c)`` from the log-ratio, ``w_c |d_c| (e_c + ε)`` for
    ``w = q`` (``f_c`` for ``p``) from the weight, the ``V``-term sum adds ``V ε w_c |d_c|``;
    a closed form (``Σ w a − lse``) instead sums terms of size ``w_c (|a_c| + |b_c|)``:
    ``(V + 2) ε`` of those.
    """
    a, b = student.detach().double(), teacher.detach().double()
    classes = a.shape[-1]
    log_p, log_q = a.log_softmax(-1), b.log_softmax(-1)
    extra = classes + 2 + math.log(classes)
    errors_p = FLOAT32_EPS * ((a - a.amax(-1, keepdim=True)).abs() + extra)
    errors_q = FLOAT32_EPS * ((b - b.amax(-1, keepdim=True)).abs() + extra)
    ratio = (log_q - log_p).abs()
    shared = errors_p + errors_q + (classes + 2) * FLOAT32_EPS * (ratio + a.abs() + b.abs())
    weighted = log_p.exp() * (shared + ratio * errors_p) + log_q.exp() * (shared + ratio * errors_q)
    return weighted.sum(-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("teacher_grad", [False, True])
def test_negative_infinity_classes_drop_out(kind: str, teacher_grad: bool) -> None:
    """``-inf`` at the same classes (vocabulary masking) equals removing those classes."""
    student, teacher = logits(3, 7, seed=19), logits(3, 7, seed=20)
    masked = torch.zeros(7, dtype=torch.bool)
    masked[[1, 4, 5]] = True
    student_inf = student.masked_fill(masked, float("-inf")).requires_grad_()
    teacher_inf = teacher.masked_fill(masked, float("-inf")).requires_grad_(teacher_grad)
    student_kept = student[:, ~masked].requires_grad_()
    teacher_kept = teacher[:, ~masked].requires_grad_(teacher_grad)
    rows = kl.divergence_rows(kind, student_inf, teacher_inf, 2.0, beta=BETA)
    kept = kl.divergence_rows(kind, student_kept, teacher_kept, 2.0, beta=BETA)
    torch.testing.assert_close(rows, kept)
    rows.sum().backward()
    kept.sum().backward()
    assert (student_inf.grad[:, masked] == 0).all()
    torch.testing.assert_close(student_inf.grad[:, ~masked], student_kept.grad)
    if teacher_grad:
        assert (teacher_inf.grad[:, masked] == 0).all()
        torch.testing.assert_close(teacher_inf.grad[:, ~masked], teacher_kept.grad)


def test_student_inf_where_teacher_has_mass_is_infinite() -> None:
    student = torch.tensor([[0.0, float("-inf"), 1.0]])
    assert kd_loss(student, torch.zeros(1, 3)).item() == float("inf")


# --------------------------------------------------------------------------- compiled kernel


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile internals
def test_compiled_kernel_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """One small compilation (~15 s on a cold cache): forward KL with per-row temperatures."""
    student, teacher = logits(6, 11, seed=21, dtype=torch.float32), logits(6, 11, seed=22)
    teacher = teacher.float()
    temperature = torch.tensor([1.0, 2.0, 4.0, 0.5, 3.0, 1.5])
    teacher[:, 3] = student[:, 3] = float("-inf")
    results = []
    for policy in ("0", "1"):
        monkeypatch.setenv(_compile.COMPILE_ENV, policy)
        leaf = student.clone().requires_grad_()
        rows = kl.divergence_rows("forward_kl", leaf, teacher, temperature)
        (rows * torch.arange(1.0, 7.0)).sum().backward()
        results.append((rows, leaf.grad))
    assert _compile._compiled_kernels, "the compiled kernel did not run"
    assert not _compile._compile_failed
    # two float32 computations, each within the error bound of the exact rows and gradients
    bounds = [
        divergence_tolerance(s[None], t[None], temperature=float(tau), scale=float(tau) ** 2)
        for s, t, tau in zip(student.double(), teacher.double(), temperature, strict=True)
    ]
    row_bounds = torch.tensor([bound.row for bound in bounds])
    gradient_bounds = torch.tensor([bound.logits for bound in bounds]) * torch.arange(1.0, 7.0)
    assert ((results[1][0] - results[0][0]).abs() <= 2 * row_bounds).all()
    assert ((results[1][1] - results[0][1]).abs() <= 2 * gradient_bounds[:, None]).all()


def test_failed_compilation_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(kind: str) -> object:
        raise RuntimeError("no compiler here")

    monkeypatch.setenv(_compile.COMPILE_ENV, "1")
    monkeypatch.setattr(_compile, "_compiled_kernel", broken)
    monkeypatch.setattr(_compile, "_compile_failed", False)
    student, teacher = logits(3, 4, seed=23, dtype=torch.float32), logits(3, 4, seed=24)
    teacher = teacher.float()
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        first = kd_loss(student, teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = kd_loss(student, teacher)
    expected = formula_rows("forward_kl", student.double(), teacher.double(), 1.0).mean()
    bound = divergence_tolerance(student.double(), teacher.double(), temperature=1.0).loss
    torch.testing.assert_close(first.double(), expected, rtol=0, atol=bound)
    assert torch.equal(first, second)


def test_compile_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = torch.empty(2, 3), torch.empty(_compile.AUTO_COMPILE_MIN_ELEMENTS)
    monkeypatch.setattr(_compile, "_platform_can_compile", lambda device_type: True)
    monkeypatch.setattr(_compile, "_compile_failed", False)
    monkeypatch.setenv(_compile.COMPILE_ENV, "auto")
    assert not _compile.should_compile(small) and _compile.should_compile(large)
    assert not _compile.should_compile(large.double())  # float64 stays on the eager kernel
    monkeypatch.setenv(_compile.COMPILE_ENV, "1")
    assert _compile.should_compile(small)
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")
    assert not _compile.should_compile(large)
    monkeypatch.setenv(_compile.COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="TORCHKD_COMPILE"):
        _compile.should_compile(small)


# --------------------------------------------------------------------------- losses


def test_jsd_endpoints_are_the_limits_of_the_scaled_divergence() -> None:
    student, teacher = logits(4, 6, seed=25), logits(4, 6, seed=26)
    forward, reverse = kd_loss(student, teacher), reverse_kl_loss(student, teacher)
    torch.testing.assert_close(jsd_loss(student, teacher, beta=0.0), forward)
    torch.testing.assert_close(jsd_loss(student, teacher, beta=1.0), reverse)
    small = 1e-5
    torch.testing.assert_close(
        jsd_loss(student, teacher, beta=small) / small, forward, rtol=1e-3, atol=0
    )
    torch.testing.assert_close(
        jsd_loss(student, teacher, beta=1 - small) / small, reverse, rtol=1e-3, atol=0
    )


def test_soft_ce_is_kd_plus_teacher_entropy() -> None:
    student, teacher = logits(4, 6, seed=27), logits(4, 6, seed=28)
    p_teacher = torch.softmax(teacher / 2.0, dim=-1)
    entropy = -(p_teacher * p_teacher.log()).sum(-1).mean()
    torch.testing.assert_close(
        soft_ce_loss(student, teacher, temperature=2.0),
        kd_loss(student, teacher, temperature=2.0) + 4.0 * entropy,
    )


def test_standardize_matches_the_reference_recipe() -> None:
    values = logits(3, 5, seed=29)
    mean = values.mean(-1, keepdim=True)
    sample_std = ((values - mean).square().sum(-1, keepdim=True) / 4).sqrt()
    torch.testing.assert_close(standardize_logits(values), (values - mean) / (sample_std + 1e-7))
    student, teacher = logits(3, 5, seed=30), logits(3, 5, seed=31)
    torch.testing.assert_close(
        ls_kd_loss(student, teacher),
        kd_loss(standardize_logits(student), standardize_logits(teacher), temperature=2.0),
    )


def test_hinton_blends_soft_and_hard_terms_on_raw_logits() -> None:
    student, teacher = logits(5, 4, seed=32), logits(5, 4, seed=33)
    labels = torch.tensor([0, 3, -100, 1, 2])
    kept = labels != -100
    value = hinton_loss(student, teacher, labels, temperature=2.0, alpha=0.7, standardize=True)
    soft = kd_loss(student[kept], teacher[kept], temperature=2.0, standardize=True)
    hard = F.cross_entropy(student[kept], labels[kept])  # raw logits, T = 1
    torch.testing.assert_close(value, 0.7 * soft + 0.3 * hard)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: kd_loss(torch.zeros(2, 32000), torch.zeros(2, 32064)),
            ValueError,
            "student has 32000 classes, teacher 32064",
        ),
        (lambda: kd_loss(torch.zeros(2, 3), torch.zeros(3, 3)), ValueError, "same shape"),
        (
            lambda: kd_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)),
            TypeError,
            "floating",
        ),
        (
            lambda: kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0),
            ValueError,
            "temperature",
        ),
        (
            lambda: kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=torch.ones(3)),
            ValueError,
            "temperature",
        ),
        (
            lambda: kd_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3, dtype=torch.bool)
            ),
            ValueError,
            "mask",
        ),
        (lambda: jsd_loss(torch.zeros(2, 3), torch.zeros(2, 3), beta=1.5), ValueError, "beta"),
        (
            lambda: hinton_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 3])),
            ValueError,
            "labels",
        ),
        (
            lambda: hinton_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0])),
            ValueError,
            "labels",
        ),
        (
            lambda: hinton_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), alpha=-0.1
            ),
            ValueError,
            "alpha",
        ),
        (lambda: ls_kd_loss(torch.zeros(2, 1), torch.zeros(2, 1)), ValueError, "2 classes"),
    ],
)
def test_bad_input_errors_name_the_problem(call: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()
