"""Skew forward / reverse KL (DistiLLM) and adaptive KL (AKL) against float64 references.

Values and gradients of the dense kernel, the fused loss with a dense teacher (logits, or hidden
states with the teacher's gradients) and with a top-k teacher, against the textbook formulas in
float64 autograd (AKL's weights detached: its gradient holds them constant); the limits
λ = 0 (plain KL) and μ = 0 / 1 (reverse / forward KL); and the option checks.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from torchkd.losses import (
    TopKLogits,
    _compile,
    akl_loss,
    fused_linear_kd_loss,
    kd_loss,
    kl,
    reverse_kl_loss,
    skew_forward_kl_loss,
    skew_reverse_kl_loss,
)
from torchkd.losses.divergence_mixtures import head_weight
from torchkd.losses.divergence_table import DIVERGENCES, NAMES

from .references import akl_weight

KINDS = ("skew_forward_kl", "skew_reverse_kl", "akl")
PARAMETER = {"skew_forward_kl": 0.3, "skew_reverse_kl": 0.2, "akl": 0.4}
OPTION = {"skew_forward_kl": "skew_lambda", "skew_reverse_kl": "skew_lambda", "akl": "akl_mu"}


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compile.COMPILE_ENV, "0")


def randn(*shape: int, seed: int, scale: float = 2.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def kl_div(first: Tensor, second: Tensor) -> Tensor:
    return (first * (first.log() - second.log())).sum(-1)


def reference_rows(kind: str, p_student: Tensor, p_teacher: Tensor, parameter: float) -> Tensor:
    """The divergence per row from probabilities, by the papers' formulas (no T^2)."""
    if kind == "skew_forward_kl":
        return kl_div(p_teacher, parameter * p_teacher + (1 - parameter) * p_student)
    if kind == "skew_reverse_kl":
        return kl_div(p_student, parameter * p_student + (1 - parameter) * p_teacher)
    weights = torch.tensor(
        [
            akl_weight(t.tolist(), s.tolist(), parameter)
            for t, s in zip(p_teacher.detach(), p_student.detach(), strict=True)
        ],
        dtype=p_student.dtype,
    )
    return weights * kl_div(p_teacher, p_student) + (1 - weights) * kl_div(p_student, p_teacher)


def assert_gradients_close(got: tuple[Tensor, ...], want: tuple[Tensor, ...]) -> None:
    for got_gradient, want_gradient in zip(got, want, strict=True):
        torch.testing.assert_close(got_gradient, want_gradient, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- dense kernel


@pytest.mark.parametrize("kind", KINDS)
def test_dense_values_and_gradients_match_the_float64_formula(kind: str) -> None:
    student = randn(5, 7, seed=0).requires_grad_()
    teacher = randn(5, 7, seed=1).requires_grad_()
    temperature = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    upstream = randn(5, seed=2)
    rows = kl.divergence_rows(kind, student, teacher, temperature, beta=PARAMETER[kind])
    column = temperature.unsqueeze(-1)
    p_student, p_teacher = torch.softmax(student / column, -1), torch.softmax(teacher / column, -1)
    expected = reference_rows(kind, p_student, p_teacher, PARAMETER[kind]) * temperature**2
    torch.testing.assert_close(rows, expected, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((rows * upstream).sum(), (student, teacher))
    assert_gradients_close(
        got, torch.autograd.grad((expected * upstream).sum(), (student, teacher))
    )


def test_every_divergence_has_its_compiled_entry_point() -> None:
    """One function per divergence (torch.compile caches per code object), the new ones too."""
    assert set(_compile._FUSED_ENTRY_POINTS) == set(NAMES)


@pytest.mark.parametrize("kind", ["skew_forward_kl", "skew_reverse_kl"])
def test_skew_gradcheck_through_the_kernel(kind: str) -> None:
    student, teacher = randn(3, 4, seed=3).requires_grad_(), randn(3, 4, seed=4).requires_grad_()
    temperature = torch.tensor([1.0, 2.0, 0.7], dtype=torch.float64)

    def function(student: Tensor, teacher: Tensor) -> Tensor:
        return kl.divergence_rows(kind, student, teacher, temperature, beta=0.1)

    assert torch.autograd.gradcheck(function, (student, teacher))


@pytest.mark.parametrize(
    ("skew", "plain"), [("skew_forward_kl", "forward_kl"), ("skew_reverse_kl", "reverse_kl")]
)
def test_skew_lambda_zero_is_the_plain_kl(skew: str, plain: str) -> None:
    """The entry at λ = 0 (and continuously near it) gives the plain KL's rows and gradients."""
    student = torch.log_softmax(randn(4, 9, seed=5), -1)
    teacher = torch.log_softmax(randn(4, 9, seed=6), -1)
    both = {"safe": True, "student_grad": True, "teacher_grad": True}
    want = DIVERGENCES[plain].dense(student, teacher, 0.0, **both)
    # near 0 the rows move by λ |∂D/∂λ|, here below 1e3 λ (forward: |1 - Σ q² / p|)
    for skew_lambda, tolerance in ((0.0, 1e-12), (1e-12, 1e-9)):
        got = DIVERGENCES[skew].dense(student, teacher, skew_lambda, **both)
        for got_part, want_part in zip(got, want, strict=True):
            torch.testing.assert_close(got_part, want_part, rtol=tolerance, atol=tolerance)
    logits, other = randn(2, 3, 6, seed=7), randn(2, 3, 6, seed=8)
    loss = skew_forward_kl_loss if skew == "skew_forward_kl" else skew_reverse_kl_loss
    plain_loss = kd_loss if skew == "skew_forward_kl" else reverse_kl_loss
    torch.testing.assert_close(
        loss(logits, other, skew_lambda=0.0, temperature=2.0),
        plain_loss(logits, other, temperature=2.0),
        rtol=1e-12,
        atol=1e-12,
    )


def test_skew_kl_is_bounded_by_minus_log_lambda() -> None:
    """Where the student misses the teacher's mode, KL explodes; the skew KLs stay finite."""
    student, teacher = torch.tensor([[40.0, 0.0, 0.0]]), torch.tensor([[0.0, 40.0, 0.0]])
    assert kd_loss(student, teacher).item() > 30
    for loss in (skew_forward_kl_loss, skew_reverse_kl_loss):
        assert 0 < loss(student, teacher, skew_lambda=0.1).item() <= -math.log(0.1) + 1e-6


def test_akl_head_is_the_top_token_and_the_mass_up_to_mu() -> None:
    """The authors' get_ratio: the top token, then every token whose cumulative teacher mass is
    at most mu; the token that crosses mu is in the tail."""
    teacher = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    student = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)  # gaps .3 .1 .1 .3
    for mu, head in ((0.0, 0.3), (0.5, 0.3), (0.7, 0.4), (0.75, 0.4), (0.95, 0.5), (1.0, 0.8)):
        expected = torch.tensor([head / 0.8], dtype=torch.float64)
        torch.testing.assert_close(head_weight(teacher, student, mu), expected, rtol=1e-12, atol=0)


def test_akl_weighs_forward_kl_where_the_student_misses_the_head() -> None:
    """A student that reshuffles the teacher's head (two tokens of mass 0.37 each, both in the
    head at μ = 0.75) but matches its tail gets mostly forward KL."""
    teacher = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    student = torch.tensor([[3.0, -3.0, 0.0, 0.0]], dtype=torch.float64)
    p_teacher, p_student = torch.softmax(teacher, -1), torch.softmax(student, -1)
    weight = akl_weight(p_teacher[0].tolist(), p_student[0].tolist(), 0.75)
    assert weight > 0.8
    forward, reverse = kl_div(p_teacher, p_student), kl_div(p_student, p_teacher)
    torch.testing.assert_close(
        akl_loss(student, teacher, akl_mu=0.75),
        (weight * forward + (1 - weight) * reverse)[0],
        rtol=1e-12,
        atol=0,
    )


# --------------------------------------------------------------------------- fused loss


def fused_reference(kind: str, logits: Tensor, teacher_logits: Tensor, temperature: float):
    p_student = torch.softmax(logits / temperature, -1)
    p_teacher = torch.softmax(teacher_logits / temperature, -1)
    rows = reference_rows(kind, p_student, p_teacher, PARAMETER[kind])
    return temperature**2 * rows.mean()


@pytest.mark.parametrize("kind", KINDS)
def test_fused_from_hidden_states_matches_the_reference(kind: str) -> None:
    """Both sides from hidden states, chunked unevenly; gradients of every input."""
    inputs = [
        randn(7, 5, seed=11),
        randn(9, 5, seed=12),
        randn(7, 6, seed=13),
        randn(9, 6, seed=14),
    ]
    inputs = [x.requires_grad_() for x in inputs]
    student_hidden, student_weight, teacher_hidden, teacher_weight = inputs
    options = {"divergence": kind, OPTION[kind]: PARAMETER[kind]}
    value = fused_linear_kd_loss(*inputs, temperature=2.0, chunk_size=3, **options)
    expected = fused_reference(
        kind, student_hidden @ student_weight.T, teacher_hidden @ teacher_weight.T, 2.0
    )
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert_gradients_close(
        torch.autograd.grad(value, inputs), torch.autograd.grad(expected, inputs)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_fused_with_dense_teacher_logits_and_masked_vocabulary(kind: str) -> None:
    """Given teacher logits with an entry masked on both sides (``-inf``), ignored labels."""
    hidden, weight = randn(6, 5, seed=15).requires_grad_(), randn(8, 5, seed=16).requires_grad_()
    bias = torch.zeros(8, dtype=torch.float64)
    bias[2] = float("-inf")
    teacher = randn(6, 8, seed=17)
    teacher[:, 2] = float("-inf")
    labels = torch.tensor([1, -100, 3, 0, -100, 5])
    value = fused_linear_kd_loss(
        hidden,
        weight,
        labels=labels,
        teacher_logits=teacher,
        student_bias=bias,
        divergence=kind,
        temperature=1.5,
        chunk_size=4,
        **{OPTION[kind]: PARAMETER[kind]},
    )
    kept = labels != -100
    keep = [0, 1, 3, 4, 5, 6, 7]
    logits = (hidden @ weight.T)[kept][:, keep]
    expected = fused_reference(kind, logits, teacher[kept][:, keep], 1.5)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert_gradients_close(
        torch.autograd.grad(value, (hidden, weight)),
        torch.autograd.grad(expected, (hidden, weight)),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [3, 8])
def test_fused_with_a_top_k_teacher_matches_the_bucket_reference(kind: str, k: int) -> None:
    """The divergence of the k + 1 buckets (kept tokens, tail); k = V: an empty tail."""
    hidden, weight = randn(5, 4, seed=18).requires_grad_(), randn(8, 4, seed=19).requires_grad_()
    teacher = randn(5, 8, seed=20)
    sparse = TopKLogits.from_logits(teacher, k=k, temperature=2.0)
    options = {"divergence": kind, OPTION[kind]: PARAMETER[kind]}
    value = fused_linear_kd_loss(
        hidden, weight, teacher_logits=sparse, temperature=2.0, chunk_size=2, **options
    )
    p_student = torch.softmax(hidden @ weight.T / 2.0, -1)
    kept = p_student.gather(1, sparse.token_ids)
    student_buckets = torch.cat([kept, (1 - kept.sum(-1, keepdim=True)).clamp_min(0)], -1)
    teacher_buckets = torch.cat([sparse.log_probs.exp(), sparse.tail_log_mass.exp()[:, None]], -1)
    if k == 8:  # drop the empty tail bucket: 0 log 0 terms
        student_buckets, teacher_buckets = student_buckets[:, :-1], teacher_buckets[:, :-1]
    rows = reference_rows(kind, student_buckets, teacher_buckets, PARAMETER[kind])
    expected = 4.0 * rows.mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert_gradients_close(
        torch.autograd.grad(value, (hidden, weight)),
        torch.autograd.grad(expected, (hidden, weight)),
    )


def test_top_k_without_a_tail_skew_reverse_is_finite_akl_is_refused() -> None:
    """A renormalized top-k (no tail mass): KL(p || q) is infinite, the skew reverse KL not."""
    hidden, weight = randn(4, 3, seed=21), randn(6, 3, seed=22)
    log_probs, ids = torch.log_softmax(randn(4, 6, seed=23), -1).topk(2, dim=-1)
    no_tail = torch.full((4,), float("-inf"), dtype=torch.float64)
    sparse = TopKLogits(ids, torch.log_softmax(log_probs, -1), no_tail)
    value = fused_linear_kd_loss(
        hidden, weight, teacher_logits=sparse, divergence="skew_reverse_kl"
    )
    assert torch.isfinite(value) and value > 0
    for divergence in ("reverse_kl", "akl"):
        with pytest.raises(ValueError, match=f"divergence='{divergence}' with a top-k teacher"):
            fused_linear_kd_loss(hidden, weight, teacher_logits=sparse, divergence=divergence)


# --------------------------------------------------------------------------- options


def test_options_out_of_range_are_refused_naming_the_argument() -> None:
    student, teacher = randn(2, 4, seed=24), randn(2, 4, seed=25)
    for loss in (skew_forward_kl_loss, skew_reverse_kl_loss):
        with pytest.raises(ValueError, match=r"skew_lambda must be in \[0, 1\), got 1.0"):
            loss(student, teacher, skew_lambda=1.0)
        with pytest.raises(TypeError, match="skew_lambda must be a real number"):
            loss(student, teacher, skew_lambda="0.1")
    with pytest.raises(ValueError, match=r"akl_mu must be in \[0, 1\], got 1.5"):
        akl_loss(student, teacher, akl_mu=1.5)
    hidden, weight = randn(2, 3, seed=26), randn(4, 3, seed=27)
    with pytest.raises(ValueError, match=r"skew_lambda must be in \[0, 1\)"):
        fused_linear_kd_loss(hidden, weight, hidden, weight, skew_lambda=1.0)
    with pytest.raises(ValueError, match="akl_mu must be in"):
        fused_linear_kd_loss(hidden, weight, hidden, weight, akl_mu=-0.1)
