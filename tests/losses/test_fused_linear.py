"""fused_linear_kd_loss against an independent dense float64 reference.

The reference materializes both ``[N, V]`` logit matrices, takes ``log_softmax`` and writes each
divergence out explicitly; its gradients come from plain autograd. The fused loss must match it
on values and on the gradients of every input that requires grad, for every divergence and
option, whatever the chunk size.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from tolerances import FLOAT64_EPS, divergence_tolerance, float32_tolerance
from torch import Tensor

from torchkd.losses import (
    FusedLinearKDLoss,
    SampledLogits,
    TopKLogits,
    _fused_kernel,
    create,
    fused_linear_kd_loss,
)

ROWS, HIDDEN_S, HIDDEN_T, VOCAB = 10, 6, 5, 13
DIVERGENCES = [
    ("forward_kl", 0.5),
    ("reverse_kl", 0.5),
    ("jsd", 0.3),
    ("jsd", 0.0),
    ("jsd", 1.0),
    ("tvd", 0.5),
]


# --------------------------------------------------------------------------- the reference


def _capped(logits: Tensor, scale: float, cap: float | None) -> Tensor:
    logits = logits * scale
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _divergence(kind: str, beta: float, log_q: Tensor, log_p: Tensor) -> Tensor:
    """Row divergences of distributions given by log-probabilities (0 log 0 = 0)."""
    q, p = log_q.exp(), log_p.exp()

    def kl(first: Tensor, log_first: Tensor, log_second: Tensor) -> Tensor:
        return torch.where(first > 0, first * (log_first - log_second), 0.0).sum(-1)

    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":
        return kl(q, log_q, log_p)
    if kind == "reverse_kl":
        return kl(p, log_p, log_q)
    if kind == "jsd":
        log_m = torch.log(beta * q + (1 - beta) * p)
        return beta * kl(q, log_q, log_m) + (1 - beta) * kl(p, log_p, log_m)
    return 0.5 * (q - p).abs().sum(-1)


def reference(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    teacher_logits: Tensor | TopKLogits | None = None,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    temperature_squared: bool = True,
    hard_label_weight: float = 0.0,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    num_items_in_batch: float | None = None,
    reduction: str = "batchmean",
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    truncate_vocab: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    """The loss with every logit materialized (float64 in, float64 out)."""
    del chunk_size
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1]).double()
    student = hidden @ student_weight.double().T
    if student_bias is not None:
        student = student + student_bias.double()
    vocab = student.shape[-1]
    if isinstance(teacher_logits, Tensor):
        teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1]).double()
    elif teacher_hidden is not None:
        teacher = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).double()
        teacher = teacher @ teacher_weight.double().T
        if teacher_bias is not None:
            teacher = teacher + teacher_bias.double()
        teacher = _capped(teacher, teacher_logit_scale, teacher_softcap)
    if truncate_vocab:
        vocab = min(vocab, teacher.shape[-1])
        student, teacher = student[:, :vocab], teacher[:, :vocab]
    student = _capped(student, student_logit_scale, student_softcap)
    log_p = torch.log_softmax(student / temperature, dim=-1)
    if isinstance(teacher_logits, TopKLogits):
        ids = teacher_logits.token_ids.reshape(-1, teacher_logits.token_ids.shape[-1])
        kept_q = teacher_logits.log_probs.reshape(ids.shape).double()
        if teacher_logits.tail_log_mass is None:
            tail_q = torch.log(1 - kept_q.exp().sum(-1))
        else:
            tail_q = teacher_logits.tail_log_mass.reshape(-1).double()
        kept_p = log_p.exp().gather(1, ids)
        log_q = torch.cat([kept_q, tail_q[:, None]], dim=-1)
        log_p = torch.cat([kept_p, (1 - kept_p.sum(-1))[:, None]], dim=-1).log()
    else:
        log_q = torch.log_softmax(teacher / temperature, dim=-1)
    rows = _divergence(divergence, beta, log_q, log_p)
    if temperature_squared and divergence != "tvd":
        rows = rows * temperature**2
    valid = torch.ones(rows.shape, dtype=torch.bool) if mask is None else mask.reshape(-1)
    if labels is not None:
        flat_labels = labels.reshape(-1)
        valid = valid & (flat_labels != ignore_index)
        if hard_label_weight:
            safe = flat_labels.clamp_min(0)
            cross_entropy = -torch.log_softmax(student, -1).gather(1, safe[:, None])[:, 0]
            rows = rows + hard_label_weight * cross_entropy
    total = torch.where(valid, rows, 0.0).sum()
    if reduction == "sum":
        return total
    return total / (num_items_in_batch or max(int(valid.sum()), 1))


# --------------------------------------------------------------------------- helpers


def make_case(
    seed: int = 0, rows: int = ROWS, dtype: torch.dtype = torch.float64, bias: bool = False
) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype)

    case = {
        "student_hidden": randn(2, rows // 2, HIDDEN_S),
        "student_weight": randn(VOCAB, HIDDEN_S, scale=0.8),
        "teacher_hidden": randn(2, rows // 2, HIDDEN_T),
        "teacher_weight": randn(VOCAB, HIDDEN_T, scale=1.2),
        "labels": torch.randint(0, VOCAB, (2, rows // 2), generator=generator),
    }
    if bias:
        case["student_bias"] = randn(VOCAB)
        case["teacher_bias"] = randn(VOCAB)
    return case


def leaves(case: dict[str, object]) -> dict[str, object]:
    """Fresh copies; floating tensors but the teacher's given logits require grad."""
    return {
        key: value.detach()
        .clone()
        .requires_grad_(value.is_floating_point() and key != "teacher_logits")
        if isinstance(value, Tensor)
        else value
        for key, value in case.items()
    }


def value_and_grads(function, case: dict[str, object], options: dict[str, object]):
    inputs = leaves(case)
    value = function(**inputs, **options)
    differentiable = {k: v for k, v in inputs.items() if isinstance(v, Tensor) and v.requires_grad}
    grads = torch.autograd.grad(value, list(differentiable.values()), allow_unused=True)
    return value, dict(zip(differentiable, grads, strict=True))


def assert_matches_reference(case, options, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    value, grads = value_and_grads(fused_linear_kd_loss, case, options)
    expected, expected_grads = value_and_grads(reference, case, options)
    torch.testing.assert_close(value, expected, rtol=rtol, atol=atol)
    for key, expected_grad in expected_grads.items():
        if expected_grad is None:
            expected_grad = torch.zeros_like(case[key])
        torch.testing.assert_close(grads[key], expected_grad, rtol=rtol, atol=atol, msg=key)


# --------------------------------------------------------------------------- value + gradients

OPTION_SETS = {
    "plain": {},
    "temperature": {"temperature": 2.0, "chunk_size": 3},
    "hard_labels_no_t2": {
        "temperature": 3.0,
        "hard_label_weight": 0.7,
        "temperature_squared": False,
    },
    "softcap_scale": {
        "temperature": 1.5,
        "student_softcap": 2.0,
        "teacher_softcap": 3.0,
        "student_logit_scale": 1.7,
        "teacher_logit_scale": 0.6,
        "chunk_size": 4,
    },
}


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
def test_hidden_teacher_matches_reference(divergence: str, beta: float, options: dict) -> None:
    case = make_case(bias=True)
    assert_matches_reference(case, {"divergence": divergence, "beta": beta, **options})


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
def test_mask_and_ignore_index_match_reference(divergence: str, beta: float) -> None:
    case = make_case(seed=1)
    case["labels"][0, 1] = case["labels"][1, 3] = -100
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[1, 0] = mask[0, 4] = False
    options = {"divergence": divergence, "beta": beta, "temperature": 2.0, "mask": mask}
    assert_matches_reference(case, {**options, "hard_label_weight": 0.3, "chunk_size": 3})
    _, grads = value_and_grads(fused_linear_kd_loss, case, options)
    left_out = ~mask | (case["labels"] == -100)
    assert (grads["student_hidden"][left_out] == 0).all()
    assert (grads["teacher_hidden"][left_out] == 0).all()


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
def test_dense_teacher_logits_match_reference(divergence: str, beta: float) -> None:
    case = make_case(seed=2, bias=True)
    hidden, weight = case.pop("teacher_hidden"), case.pop("teacher_weight")
    case["teacher_logits"] = (hidden @ weight.T + case.pop("teacher_bias")).detach()
    options = {"divergence": divergence, "beta": beta, "temperature": 2.0, "chunk_size": 4}
    assert_matches_reference(case, options)
    case["labels"][1, 2] = -100  # rows left out: the teacher's rows are gathered per chunk
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[0, :2] = False
    assert_matches_reference(case, {**options, "mask": mask, "chunk_size": 3})


@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
@pytest.mark.parametrize("given_tail", [True, False], ids=["tail", "no_tail"])
def test_topk_teacher_matches_reference(divergence: str, beta: float, given_tail: bool) -> None:
    case = make_case(seed=3, bias=True)
    teacher = case.pop("teacher_hidden") @ case.pop("teacher_weight").T
    sparse = TopKLogits.from_logits(teacher, k=4, temperature=2.0)
    if not given_tail:
        sparse = TopKLogits(sparse.token_ids, sparse.log_probs.double())
    case.pop("teacher_bias")
    options = {"divergence": divergence, "beta": beta, "temperature": 2.0, "chunk_size": 3}
    value, grads = value_and_grads(
        fused_linear_kd_loss, case, {**options, "teacher_logits": sparse}
    )
    expected, expected_grads = value_and_grads(
        reference, case, {**options, "teacher_logits": sparse}
    )
    # float64 both sides, summed in other orders: per row the (H + 1)-term logits, the
    # V-class log-softmax, the k + 1 top-k terms, then the mean; every term and log-ratio ≤ L
    logits = case["student_hidden"] @ case["student_weight"].T + case["student_bias"]
    size = 2 * float(logits.abs().max()) / 2.0 + math.log(VOCAB)
    size += float(sparse.log_probs.abs().max())
    roundings = HIDDEN_S + 1 + VOCAB + 4 + 4 + 2 + ROWS
    atol = float32_tolerance(roundings, 4.0 * (1 + size) ** 2, FLOAT64_EPS)  # T² = 4
    torch.testing.assert_close(value, expected, rtol=0, atol=atol)
    largest = max(float(case[key].abs().max()) for key in ("student_hidden", "student_weight"))
    for key in ("student_hidden", "student_weight", "student_bias"):
        # the gradient T (p − q) / N reaches h, W, b through sums of ≤ V, N terms of size ≤ max
        # |h|, |W|: (V + N) more roundings of a gradient ≤ 2 T max(1, |h|, |W|)
        bound = float32_tolerance(
            roundings + VOCAB + ROWS, 2 * 2.0 * max(1.0, largest) * (1 + size) ** 2, FLOAT64_EPS
        )
        torch.testing.assert_close(grads[key], expected_grads[key], rtol=0, atol=bound)


def test_topk_with_every_token_equals_the_dense_loss() -> None:
    case = make_case(seed=4)
    teacher = case.pop("teacher_hidden") @ case.pop("teacher_weight").T
    for divergence, beta in DIVERGENCES:
        options = {"divergence": divergence, "beta": beta, "temperature": 2.0}
        dense = fused_linear_kd_loss(**case, teacher_logits=teacher, **options)
        sparse = TopKLogits.from_logits(teacher, k=VOCAB, temperature=2.0)
        sparse = TopKLogits(sparse.token_ids, sparse.log_probs, None)
        torch.testing.assert_close(
            fused_linear_kd_loss(**case, teacher_logits=sparse, **options), dense
        )


def test_topk_forward_kl_is_a_lower_bound_of_the_dense_kl() -> None:
    case = make_case(seed=5)
    teacher = case.pop("teacher_hidden") @ case.pop("teacher_weight").T
    dense = fused_linear_kd_loss(**case, teacher_logits=teacher, reduction="sum")
    previous = 0.0
    for k in (1, 3, 6, 12):
        sparse = TopKLogits.from_logits(teacher, k=k)
        value = float(fused_linear_kd_loss(**case, teacher_logits=sparse, reduction="sum"))
        assert previous - 1e-6 <= value <= float(dense) + 1e-6
        previous = value


def test_gradcheck_float64() -> None:
    case = make_case(rows=4, bias=True)
    keys = [k for k in case if k != "labels"]
    options = {
        "divergence": "jsd",
        "beta": 0.4,
        "temperature": 1.5,
        "hard_label_weight": 0.5,
        "student_softcap": 3.0,
        "teacher_softcap": 2.5,
        "chunk_size": 3,
    }

    def function(*tensors: Tensor) -> Tensor:
        inputs = dict(zip(keys, tensors, strict=True))
        return fused_linear_kd_loss(**inputs, labels=case["labels"], **options)

    tensors = [case[k].clone().requires_grad_() for k in keys]
    assert torch.autograd.gradcheck(function, tensors)
    sparse = TopKLogits.from_logits(case["teacher_hidden"] @ case["teacher_weight"].T, k=3)

    def sparse_function(hidden: Tensor, weight: Tensor) -> Tensor:
        return fused_linear_kd_loss(hidden, weight, teacher_logits=sparse, chunk_size=3)

    student = [case["student_hidden"].clone().requires_grad_(), case["student_weight"].clone()]
    assert torch.autograd.gradcheck(sparse_function, [student[0], student[1].requires_grad_()])


# --------------------------------------------------------------------------- chunking, precision


@pytest.mark.parametrize(("divergence", "beta"), [("forward_kl", 0.5), ("jsd", 0.5), ("tvd", 0.5)])
def test_result_does_not_depend_on_the_chunk_size(divergence: str, beta: float) -> None:
    case = make_case(seed=6, rows=14, bias=True)
    options = {"divergence": divergence, "beta": beta, "temperature": 2.0, "hard_label_weight": 0.2}
    value, grads = value_and_grads(fused_linear_kd_loss, case, {**options, "chunk_size": 14})
    for chunk_size in (1, 3, 5, 8, 13, 100, None):
        other, other_grads = value_and_grads(
            fused_linear_kd_loss, case, {**options, "chunk_size": chunk_size}
        )
        torch.testing.assert_close(other, value, rtol=1e-12, atol=1e-14)
        for key, gradient in grads.items():
            torch.testing.assert_close(other_grads[key], gradient, rtol=1e-12, atol=1e-14)


@pytest.fixture
def two_row_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The elementwise work in blocks of 2 rows (VOCAB entries each), below every chunk size."""
    monkeypatch.setattr(_fused_kernel, "BLOCK_ELEMENTS", 2 * VOCAB)


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES)
def test_blocks_of_rows_match_reference(
    two_row_blocks: None, divergence: str, beta: float, options: dict
) -> None:
    """Blocks of 2 rows in chunks of 3 to 5 (an odd last block): the hidden teacher with its
    gradients, hard labels, softcaps (their derivatives kept per block) and a mask."""
    case = make_case(bias=True)
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = False
    options = {"divergence": divergence, "beta": beta, "chunk_size": 5, "mask": mask, **options}
    assert_matches_reference(case, options)


@pytest.mark.parametrize("blocks", [False, True], ids=["one_block", "two_row_blocks"])
@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_frozen_teacher_forward_kl_matches_reference(
    monkeypatch: pytest.MonkeyPatch, options: dict, blocks: bool
) -> None:
    """A frozen teacher (no gradient) and finite logits: forward KL takes the probability form
    (each log-sum-exp from its softmax) rather than the log form, and matches the reference."""
    if blocks:
        monkeypatch.setattr(_fused_kernel, "BLOCK_ELEMENTS", 2 * VOCAB)
    case = make_case(seed=8, bias=True)
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[1, 3] = False
    options = {"divergence": "forward_kl", "chunk_size": 5, "mask": mask, **options}
    frozen = {"teacher_hidden", "teacher_weight", "teacher_bias"}
    inputs = {
        key: value.detach().clone().requires_grad_(key not in frozen and value.is_floating_point())
        for key, value in case.items()
    }
    student = [inputs[key] for key in ("student_hidden", "student_weight", "student_bias")]
    value = fused_linear_kd_loss(**inputs, **options)
    expected = reference(**inputs, **options)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(value, student)
    expected_grads = torch.autograd.grad(expected, student)
    for gradient, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(gradient, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("teacher", ["logits", "topk", "sampled"])
def test_blocks_of_rows_read_given_and_cached_teachers_row_by_row(
    monkeypatch: pytest.MonkeyPatch, teacher: str
) -> None:
    """The teacher's given logits, top-k and sampled rows are read block by block: the result
    equals that of one block per chunk (each row's arithmetic is the same; only the float64
    sum over blocks is grouped otherwise)."""
    case = make_case(seed=7, bias=True)
    logits = (case.pop("teacher_hidden") @ case.pop("teacher_weight").T).detach()
    case.pop("teacher_bias")
    given = {
        "logits": logits,
        "topk": TopKLogits.from_logits(logits, k=4, temperature=2.0),
        "sampled": SampledLogits.from_logits(
            logits, 5, 2.0, generator=torch.Generator().manual_seed(0)
        ),
    }[teacher]
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[1, :2] = False
    options = {"teacher_logits": given, "temperature": 2.0, "chunk_size": 4, "mask": mask}
    options["hard_label_weight"] = 0.3
    value, grads = value_and_grads(fused_linear_kd_loss, case, options)
    monkeypatch.setattr(_fused_kernel, "BLOCK_ELEMENTS", 3 * VOCAB)
    blocked, blocked_grads = value_and_grads(fused_linear_kd_loss, case, options)
    torch.testing.assert_close(blocked, value, rtol=4 * FLOAT64_EPS, atol=0)
    for key, gradient in grads.items():
        torch.testing.assert_close(blocked_grads[key], gradient, rtol=0, atol=0, msg=key)


# float32 compute on half inputs: the loss to float32's error bound (tests/tolerances.py) of
# float64 on the same rounded inputs; gradients come back in the half type, so to its rounding
# (bf16 2^-8, f16 2^-11).
HALF_TOLERANCES = {torch.bfloat16: 8e-3, torch.float16: 1e-3}


def float32_loss_bound(case: dict[str, Tensor]) -> float:
    """float32 error bound of the half test's loss: JSD(0.3) at T = 2 times T² plus the
    cross-entropy at T = 1 (one of the log-probabilities the forward-KL bound covers) times
    0.5, from logits ``h Wᵀ + b`` (the bias as one more dot-product term)."""

    def projection(side: str) -> tuple[Tensor, Tensor]:
        hidden = case[f"{side}_hidden"].reshape(ROWS, -1)
        ones = torch.ones(ROWS, 1, dtype=hidden.dtype)
        weight, bias = case[f"{side}_weight"], case[f"{side}_bias"]
        return torch.cat([hidden, ones], 1), torch.cat([weight, bias[:, None]], 1)

    student, teacher = projection("student"), projection("teacher")
    logits = [hidden @ weight.T for hidden, weight in (student, teacher)]
    common = {"student_projection": student, "teacher_projection": teacher}
    divergence = divergence_tolerance(
        *logits, temperature=2.0, divergence="jsd", beta=0.3, scale=4.0, **common
    )
    cross_entropy = divergence_tolerance(*logits, temperature=1.0, scale=0.5, **common)
    return divergence.loss + cross_entropy.loss


@pytest.mark.parametrize("dtype", HALF_TOLERANCES, ids=["bf16", "fp16"])
def test_half_inputs_give_float32_close_to_float64(dtype: torch.dtype) -> None:
    case = make_case(seed=7, dtype=dtype, bias=True)
    options = {"divergence": "jsd", "beta": 0.3, "temperature": 2.0, "hard_label_weight": 0.5}
    value, grads = value_and_grads(fused_linear_kd_loss, case, {**options, "chunk_size": 3})
    assert value.dtype == torch.float32
    exact = {k: v.double() if v.is_floating_point() else v for k, v in case.items()}
    expected, expected_grads = value_and_grads(reference, exact, options)
    torch.testing.assert_close(value.double(), expected, rtol=0, atol=float32_loss_bound(exact))
    tolerance = HALF_TOLERANCES[dtype]
    for key, gradient in grads.items():
        assert gradient.dtype == dtype
        torch.testing.assert_close(
            gradient.double(), expected_grads[key], rtol=tolerance, atol=tolerance * 1e-2
        )


# --------------------------------------------------------------------------- normalization


def test_micro_batches_accumulate_to_the_one_batch_gradient() -> None:
    generator = torch.Generator().manual_seed(8)
    lengths = (7, 2, 11)
    weight = torch.randn(VOCAB, HIDDEN_S, generator=generator, dtype=torch.float64)
    teacher_weight = torch.randn(VOCAB, HIDDEN_T, generator=generator, dtype=torch.float64)
    hidden = [torch.randn(n, HIDDEN_S, generator=generator, dtype=torch.float64) for n in lengths]
    teacher = [torch.randn(n, HIDDEN_T, generator=generator, dtype=torch.float64) for n in lengths]
    labels = [torch.randint(0, VOCAB, (n,), generator=generator) for n in lengths]
    labels[0][2:5] = -100
    labels[2][::3] = -100
    total_valid = sum(int((y != -100).sum()) for y in labels)
    options = {"divergence": "jsd", "temperature": 2.0, "hard_label_weight": 0.5, "chunk_size": 4}

    accumulated = weight.clone().requires_grad_()
    for h, t, y in zip(hidden, teacher, labels, strict=True):
        loss = fused_linear_kd_loss(
            h, accumulated, t, teacher_weight, y, num_items_in_batch=total_valid, **options
        )
        loss.backward()
    whole = weight.clone().requires_grad_()
    fused_linear_kd_loss(
        torch.cat(hidden), whole, torch.cat(teacher), teacher_weight, torch.cat(labels), **options
    ).backward()
    torch.testing.assert_close(accumulated.grad, whole.grad, rtol=1e-12, atol=1e-14)
    per_batch_mean = weight.clone().requires_grad_()
    for h, t, y in zip(hidden, teacher, labels, strict=True):  # the classic bug: k means
        (fused_linear_kd_loss(h, per_batch_mean, t, teacher_weight, y, **options) / 3).backward()
    assert not torch.allclose(per_batch_mean.grad, whole.grad)


def test_everything_masked_gives_exactly_zero_and_zero_gradients() -> None:
    case = make_case(seed=9, bias=True)
    for extra in ({"mask": torch.zeros(2, ROWS // 2, dtype=torch.bool)}, {"ignore_index": -100}):
        inputs = dict(case)
        if "ignore_index" in extra:
            inputs["labels"] = torch.full_like(case["labels"], -100)
        value, grads = value_and_grads(
            fused_linear_kd_loss, inputs, {**extra, "hard_label_weight": 1.0}
        )
        assert value.item() == 0.0
        for key, gradient in grads.items():
            assert gradient is not None and (gradient == 0).all(), key


def test_reduction_sum_and_num_items() -> None:
    case = make_case(seed=10)
    total = fused_linear_kd_loss(**case, reduction="sum")
    torch.testing.assert_close(fused_linear_kd_loss(**case), total / ROWS)
    torch.testing.assert_close(fused_linear_kd_loss(**case, num_items_in_batch=40), total / 40)
    assert_matches_reference(case, {"reduction": "sum", "temperature": 2.0})


# --------------------------------------------------------------------------- vocabulary


def test_negative_infinite_teacher_logits_are_masked_vocabulary() -> None:
    case = make_case(seed=11)
    teacher = case.pop("teacher_hidden") @ case.pop("teacher_weight").T
    teacher[:, :, :3] = float("-inf")
    for divergence, beta in (("forward_kl", 0.5), ("jsd", 0.5), ("tvd", 0.5)):
        options = {"divergence": divergence, "beta": beta, "teacher_logits": teacher}
        value, grads = value_and_grads(fused_linear_kd_loss, case, options)
        assert torch.isfinite(value)
        assert all(torch.isfinite(g).all() for g in grads.values())
        assert_matches_reference(case, options)


def test_truncated_vocabulary_compares_the_first_entries() -> None:
    case = make_case(seed=12, bias=True)
    case["teacher_weight"] = case["teacher_weight"][:-3]
    case["teacher_bias"] = case["teacher_bias"][:-3]
    with pytest.raises(ValueError, match="13 vocabulary entries, teacher 10"):
        fused_linear_kd_loss(**case)
    case["labels"] = case["labels"] % 10
    options = {"truncate_vocab": True, "temperature": 2.0, "hard_label_weight": 0.5}
    assert_matches_reference(case, options)
    _, grads = value_and_grads(fused_linear_kd_loss, case, options)
    assert grads["student_weight"].shape == (VOCAB, HIDDEN_S)
    assert (grads["student_weight"][10:] == 0).all() and (grads["student_bias"][10:] == 0).all()


# --------------------------------------------------------------------------- glue


def test_module_registry_no_grad_and_retained_graph() -> None:
    case = make_case(seed=13)
    module = create("fused_linear_kd", divergence="reverse_kl", temperature=2.0, chunk_size=4)
    assert isinstance(module, FusedLinearKDLoss)
    assert "divergence='reverse_kl'" in repr(module)
    functional = fused_linear_kd_loss(
        **case, divergence="reverse_kl", temperature=2.0, chunk_size=4
    )
    with torch.no_grad():
        torch.testing.assert_close(module(**case), functional, rtol=0, atol=0)
    inputs = leaves(case)
    value = module(**inputs)
    value.backward(retain_graph=True)
    first = inputs["student_weight"].grad.clone()
    (2 * value).backward()
    torch.testing.assert_close(inputs["student_weight"].grad, 3 * first)


BAD_INPUTS = {
    "no_teacher": ({"teacher_hidden": None}, ValueError, "teacher is missing"),
    "two_teachers": ({"teacher_logits": torch.zeros(2, 5, VOCAB)}, ValueError, "either"),
    "logits_grad": (
        {
            "teacher_hidden": None,
            "teacher_weight": None,
            "teacher_logits": torch.zeros(2, 5, VOCAB, requires_grad=True),
        },
        ValueError,
        "detach",
    ),
    "hidden_size": ({"student_weight": torch.zeros(VOCAB, 4)}, ValueError, "hidden size 6"),
    "teacher_tokens": ({"teacher_hidden": torch.zeros(3, HIDDEN_T)}, ValueError, "same tokens"),
    "bias_shape": ({"student_bias": torch.zeros(4)}, ValueError, "student_bias"),
    "integer_hidden": (
        {"student_hidden": torch.zeros(2, 5, HIDDEN_S, dtype=torch.long)},
        TypeError,
        "student_hidden",
    ),
    "divergence": ({"divergence": "kl"}, ValueError, "divergence"),
    "reduction": ({"reduction": "none"}, ValueError, "reduction"),
    "beta": ({"beta": 1.5}, ValueError, "beta"),
    "temperature": ({"temperature": 0.0}, ValueError, "temperature"),
    "chunk_size": ({"chunk_size": 0}, ValueError, "chunk_size"),
    "softcap": ({"student_softcap": -1.0}, ValueError, "student_softcap"),
    "labels_range": ({"labels": torch.full((2, 5), VOCAB)}, ValueError, "labels"),
    "labels_shape": ({"labels": torch.zeros(10, dtype=torch.long)}, ValueError, "labels"),
    "hard_without_labels": ({"labels": None, "hard_label_weight": 1.0}, ValueError, "labels"),
    "mask_shape": ({"mask": torch.ones(10, dtype=torch.bool)}, ValueError, "mask"),
    "num_items": ({"num_items_in_batch": 0}, ValueError, "num_items_in_batch"),
    "num_items_sum": ({"num_items_in_batch": 4, "reduction": "sum"}, ValueError, "batchmean"),
}


@pytest.mark.parametrize(("change", "error", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_clear_errors(change: dict, error: type, match: str) -> None:
    case = make_case(seed=14)
    with pytest.raises(error, match=match):
        fused_linear_kd_loss(**{**case, **change})


def _sparse(ids: Tensor, log_probs: Tensor, tail: Tensor | None = None) -> TopKLogits:
    return TopKLogits(ids, log_probs, tail)


def test_bad_topk_targets_raise_clear_errors() -> None:
    case = make_case(seed=15)
    del case["teacher_hidden"], case["teacher_weight"]
    ids = torch.tensor([0, 1, 2]).repeat(2, 5, 1)
    uniform = torch.full((2, 5, 3), math.log(0.2), dtype=torch.float64)
    bad = {
        "ids dtype": (_sparse(ids.int(), uniform), TypeError, "int64"),
        "ids range": (_sparse(ids + VOCAB - 2, uniform), ValueError, r"token_ids must be in"),
        "repeated": (_sparse(ids.clamp_max(1), uniform), ValueError, "distinct"),
        "shape": (_sparse(ids[:1], uniform[:1]), ValueError, "shape"),
        "positive": (_sparse(ids, uniform + 2.0), ValueError, "finite log-probabilities"),
        "over one": (
            _sparse(ids, torch.full_like(uniform, math.log(0.4))),
            ValueError,
            "more than 1",
        ),
        "tail shape": (_sparse(ids, uniform, torch.zeros(3)), ValueError, "tail_log_mass"),
    }
    for name, (sparse, error, match) in bad.items():
        with pytest.raises(error, match=match):
            fused_linear_kd_loss(**case, teacher_logits=sparse)
        assert name
    full = _sparse(ids, torch.full_like(uniform, -math.log(3.0)))  # the tail has no mass
    with pytest.raises(ValueError, match="positive tail mass"):
        fused_linear_kd_loss(**case, teacher_logits=full, divergence="reverse_kl")
    with pytest.raises(ValueError, match="final"):
        fused_linear_kd_loss(**case, teacher_logits=full, teacher_softcap=30.0)


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    hidden=st.integers(1, 5),
    vocab=st.integers(2, 9),
    chunk_size=st.integers(1, 10),
    divergence=st.sampled_from(["forward_kl", "reverse_kl", "jsd", "tvd"]),
    temperature=st.floats(0.5, 4.0),
    spread=st.floats(0.1, 8.0),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_the_reference_and_are_non_negative(
    rows: int,
    hidden: int,
    vocab: int,
    chunk_size: int,
    divergence: str,
    temperature: float,
    spread: float,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * spread**0.5

    case = {
        "student_hidden": randn(rows, hidden),
        "student_weight": randn(vocab, hidden),
        "teacher_hidden": randn(rows, hidden + 1),
        "teacher_weight": randn(vocab, hidden + 1),
    }
    options = {"divergence": divergence, "temperature": temperature, "chunk_size": chunk_size}
    assert_matches_reference(case, options, rtol=1e-8, atol=1e-10)
    assert fused_linear_kd_loss(**case, **options) >= -1e-12


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_a_topk_teacher_with_k_equal_to_the_vocabulary_equals_the_dense_teacher(
    divergence: str,
) -> None:
    """k = V: both tails are empty, so the bucket divergence is the dense one (issue 22 §4b);
    reverse KL used to refuse it ("needs a positive tail mass"). float64 throughout, so the
    two paths agree to float64 rounding of V terms."""
    generator = torch.Generator().manual_seed(31)
    hidden, weight = (
        torch.randn(*s, generator=generator, dtype=torch.float64) for s in ((6, 5), (VOCAB, 5))
    )
    teacher = torch.randn(6, VOCAB, generator=generator, dtype=torch.float64) * 2.0
    options = {"divergence": divergence, "temperature": 2.0}
    results = []
    for target in (teacher, TopKLogits.from_logits(teacher, VOCAB, 2.0)):
        leaf = hidden.clone().requires_grad_()
        loss = fused_linear_kd_loss(leaf, weight, teacher_logits=target, **options)
        results.append((loss, torch.autograd.grad(loss, leaf)[0]))
    tolerance = 16 * VOCAB * torch.finfo(torch.float64).eps
    torch.testing.assert_close(results[1][0], results[0][0], rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_large_temperatures_keep_float32_precision(divergence: str) -> None:
    """T = 1000, N = 64, V = 4096 (issue 22 §4b): float32 cannot resolve the divergence (its
    T^2-scaled rounding T^2 eps log V is ~1, comparable to the value), so the loss is redone in
    float64 as the dense losses do; value and gradients then equal the float64 loss rounded to
    float32 (a few float32 ulps; before: 8.6e-4 relative in value, 9e-6 in gradients)."""
    generator = torch.Generator().manual_seed(32)
    shapes = {"student_hidden": (64, 16), "student_weight": (4096, 16), "teacher_hidden": (64, 16)}
    case = {k: torch.randn(*s, generator=generator, dtype=torch.float64) for k, s in shapes.items()}
    case["teacher_weight"] = case["student_weight"]
    options = {"divergence": divergence, "temperature": 1000.0}
    results = []
    for dtype in (torch.float32, torch.float64):
        inputs = {k: v.to(dtype) for k, v in case.items()}
        inputs["student_hidden"].requires_grad_()
        loss = fused_linear_kd_loss(**inputs, **options)
        results.append((loss.double(), torch.autograd.grad(loss, inputs["student_hidden"])[0]))
    (value, gradient), (expected, expected_gradient) = results
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(value, expected, rtol=4 * eps, atol=0)
    atol = 8 * eps * float(expected_gradient.abs().max())
    torch.testing.assert_close(gradient.double(), expected_gradient, rtol=0, atol=atol)
