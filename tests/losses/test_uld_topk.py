"""ULD from a cached top-k teacher (``fused_linear_uld_loss(..., teacher_logits=TopKLogits)``):
exact where the tail leaves nothing to spread, within ``2m`` of the dense ULD otherwise, the
float16 cache within its precision of the fused form, and its refusals."""

from __future__ import annotations

import pytest
import torch

from torchkd.losses import SampledLogits, TopKLogits, fused_linear_uld_loss

from .test_uld import inputs, logits

T = 2.0


def _student(x: dict) -> list:
    hidden = x["student_hidden"].clone().requires_grad_(True)
    return [hidden, x["student_weight"]]


def _cached(x: dict, vocab_t: int, k: int, **options):
    student = _student(x)
    top = TopKLogits.from_logits(logits(x, "teacher"), k, T)
    value = fused_linear_uld_loss(
        *student,
        labels=x["labels"],
        student_bias=x["student_bias"],
        teacher_logits=top,
        teacher_vocab_size=vocab_t,
        temperature=T,
        **options,
    )
    (grad,) = torch.autograd.grad(value, student[0])
    return value, grad, top


def _dense(x: dict, **options):
    student = _student(x)
    value = fused_linear_uld_loss(
        *student,
        x["teacher_hidden"],
        x["teacher_weight"],
        x["labels"],
        student_bias=x["student_bias"],
        teacher_bias=x["teacher_bias"],
        temperature=T,
        **options,
    )
    (grad,) = torch.autograd.grad(value, student[0])
    return value, grad


@pytest.mark.parametrize(("vocab_s", "vocab_t"), [(5, 9), (9, 5), (6, 6)])
@pytest.mark.parametrize("missing", [0, 1])  # k = V_T, V_T - 1: nothing left to spread
def test_a_tail_of_at_most_one_token_gives_the_dense_uld(vocab_s, vocab_t, missing) -> None:
    x = inputs(vocab_s, vocab_t)
    value, grad, _ = _cached(x, vocab_t, vocab_t - missing, hard_label_weight=0.5, chunk_size=5)
    dense_value, dense_grad = _dense(x, hard_label_weight=0.5)
    torch.testing.assert_close(value, dense_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-12, atol=1e-12)


def test_a_tail_without_mass_gives_the_dense_uld() -> None:
    x = inputs(5, 9)
    weight = x["teacher_weight"].clone()
    weight[4:] = 0.0
    bias = x["teacher_bias"].clone()
    bias[4:] = -1e4  # the last five teacher tokens have probability 0 at T = 2
    x = {**x, "teacher_weight": weight, "teacher_bias": bias}
    value, grad, _ = _cached(x, 9, 4)
    dense_value, dense_grad = _dense(x)
    torch.testing.assert_close(value, dense_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, dense_grad, rtol=1e-12, atol=1e-12)


def test_a_spread_tail_stays_within_twice_its_mass_of_the_dense_uld() -> None:
    x = inputs(5, 9)
    value, _, top = _cached(x, 9, 3, reduction="sum")
    dense_value, _ = _dense(x, reduction="sum")
    valid = x["labels"] != -100
    bound = 2 * top.tail_log_mass.exp()[valid].sum()
    assert 0 < abs(float((value - dense_value).detach())) <= float(bound)


def test_a_float16_cache_matches_the_fused_form_within_its_precision() -> None:
    x = {k: v.float() if v.is_floating_point() else v for k, v in inputs(9, 5).items()}
    top = TopKLogits.from_logits(logits(x, "teacher"), 5, T)
    stored = TopKLogits(top.token_ids, top.log_probs.half().float(), top.tail_log_mass)
    student = _student(x)
    value = fused_linear_uld_loss(
        *student, labels=x["labels"], student_bias=x["student_bias"], teacher_logits=stored,
        teacher_vocab_size=5, temperature=T, chunk_size=4,
    )  # fmt: skip
    dense_value, _ = _dense(x)
    torch.testing.assert_close(value, dense_value, rtol=2e-3, atol=2e-3)


def test_cached_teachers_uld_cannot_read_are_refused() -> None:
    x = inputs(5, 9)
    student = _student(x)
    top = TopKLogits.from_logits(logits(x, "teacher"), 3, T)
    with pytest.raises(ValueError, match="teacher_vocab_size: ULD from a cached top-k teacher"):
        fused_linear_uld_loss(*student, teacher_logits=top)
    with pytest.raises(ValueError, match="teacher_vocab_size"):
        fused_linear_uld_loss(*student, teacher_logits=top, teacher_vocab_size=0)
    with pytest.raises(ValueError, match=r"token_ids must be in \[0, 4\)"):
        fused_linear_uld_loss(*student, teacher_logits=top, teacher_vocab_size=4)
    sampled = SampledLogits.from_logits(logits(x, "teacher"), 4, T, generator=torch.Generator())
    with pytest.raises(ValueError, match="not linear in the teacher's probabilities"):
        fused_linear_uld_loss(*student, teacher_logits=sampled, teacher_vocab_size=9)
    with pytest.raises(TypeError, match="TopKLogits"):
        fused_linear_uld_loss(*student, teacher_logits=logits(x, "teacher"), teacher_vocab_size=9)
