"""The sampled teacher (SampledLogits): the estimator for a fixed draw against a float64
brute-force formula, its unbiasedness over many draws (a statistical test), the draws, and the
refusals."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from tolerances import FLOAT64_EPS, float32_tolerance
from torch import Tensor

from torchkd.losses import SampledLogits, fused_linear_kd_loss
from torchkd.losses.sampled import draw_samples

ROWS, HIDDEN_S, HIDDEN_T, VOCAB, SAMPLES, T = 10, 6, 5, 13, 5, 2.0


def make_case(seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "student_hidden": randn(2, ROWS // 2, HIDDEN_S).requires_grad_(True),
        "student_weight": randn(VOCAB, HIDDEN_S).requires_grad_(True),
        "student_bias": randn(VOCAB).requires_grad_(True),
        "teacher_logits": 2 * randn(2, ROWS // 2, HIDDEN_T) @ randn(VOCAB, HIDDEN_T).T,
    }


def brute_force(
    case: dict[str, Tensor], sampled: SampledLogits, temperature: float, kept: Tensor | None = None
) -> Tensor:
    """T² mean over the ``kept`` rows (default all) of −Σ_j q̂_j log p_j − H(q), q̂ written out
    over the vocabulary."""
    logits = case["student_hidden"] @ case["student_weight"].T + case["student_bias"]
    log_p = torch.log_softmax(logits.reshape(-1, VOCAB) / temperature, dim=-1)
    counts = sampled.counts.reshape(-1, SAMPLES).double()
    q_hat = torch.zeros_like(log_p).scatter_add_(1, sampled.token_ids.reshape(-1, SAMPLES), counts)
    q_hat = q_hat / q_hat.sum(-1, keepdim=True)
    if sampled.head is not None:  # the head exactly, the draws scaled by the mass outside it
        head = sampled.head
        q_hat = q_hat * head.tail_log_mass.reshape(-1, 1).double().exp()
        head_ids = head.token_ids.reshape(-1, head.token_ids.shape[-1])
        q_hat = q_hat.scatter_add(1, head_ids, head.log_probs.reshape(head_ids.shape).exp())
    rows = -(q_hat * log_p).sum(-1) - sampled.entropy.reshape(-1).double()
    return temperature**2 * (rows.mean() if kept is None else rows[kept].mean())


def grads(loss: Tensor, case: dict[str, Tensor]) -> list[Tensor]:
    keys = ("student_hidden", "student_weight", "student_bias")
    return list(torch.autograd.grad(loss, [case[key] for key in keys]))


def fused(case: dict[str, Tensor], sampled: SampledLogits, **options) -> Tensor:
    inputs = {key: value for key, value in case.items() if key != "teacher_logits"}
    return fused_linear_kd_loss(**inputs, teacher_logits=sampled, temperature=T, **options)


def draw(case: dict[str, Tensor], seed: int, k: int = 0) -> SampledLogits:
    generator = torch.Generator().manual_seed(seed)
    return SampledLogits.from_logits(case["teacher_logits"], SAMPLES, T, generator=generator, k=k)


def float64_bounds(case: dict[str, Tensor]) -> tuple[float, float]:
    """Bounds on the loss and gradient differences of two float64 computations summed in other
    orders: per row the (H + 1)-term logits, the V-class log-softmax, the N sampled terms and
    the entropy, then the mean over rows, each term at most the size of the softened logits
    and log V; the gradient T (p − q̂) / R reaches h, W, b through sums of ≤ V, R terms of size
    ≤ max |h|, |W|."""
    logits = (case["student_hidden"] @ case["student_weight"].T + case["student_bias"]).detach()
    size = 2 * float(logits.abs().max()) / T + math.log(VOCAB)
    roundings = HIDDEN_S + 1 + VOCAB + SAMPLES + 2 + ROWS
    value = float32_tolerance(roundings, T**2 * (1 + size), FLOAT64_EPS)
    largest = max(
        float(case[key].detach().abs().max()) for key in ("student_hidden", "student_weight")
    )
    gradient = float32_tolerance(roundings + VOCAB + ROWS, 2 * T * max(1.0, largest), FLOAT64_EPS)
    return value, gradient


def assert_matches(value: Tensor, expected: Tensor, case: dict[str, Tensor]) -> None:
    value_bound, gradient_bound = float64_bounds(case)
    torch.testing.assert_close(value, expected, rtol=0, atol=value_bound)
    for got, want in zip(grads(value, case), grads(expected, case), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=gradient_bound)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("k", [0, 3], ids=["samples", "head+samples"])
def test_a_fixed_draw_matches_the_float64_formula(chunk_size: int | None, k: int) -> None:
    case = make_case(0)
    sampled = draw(case, 1, k)
    value = fused(case, sampled, chunk_size=chunk_size)
    assert_matches(value, brute_force(case, sampled, T), case)


def test_ignored_and_masked_rows_are_left_out() -> None:
    case = make_case(8)
    sampled = draw(case, 2)
    labels = torch.zeros(2, ROWS // 2, dtype=torch.int64)
    labels[0, 1] = -100
    mask = torch.ones(2, ROWS // 2, dtype=torch.bool)
    mask[1, 3] = False
    kept = (labels != -100).reshape(-1) & mask.reshape(-1)
    value = fused(case, sampled, labels=labels, mask=mask, chunk_size=3)
    assert_matches(value, brute_force(case, sampled, T, kept), case)


def test_padding_and_repeated_ids_add_up() -> None:
    """Slots of count 0 are ignored whatever their id; one id given twice adds its counts."""
    case = make_case(2)
    sampled = draw(case, 3)
    padded = SampledLogits(
        torch.cat([sampled.token_ids, torch.full_like(sampled.token_ids[..., :2], 7)], -1),
        torch.cat([sampled.counts, torch.zeros_like(sampled.counts[..., :2])], -1),
        sampled.entropy,
    )
    torch.testing.assert_close(fused(case, padded), fused(case, sampled))


DRAWS = 2000


def standard_errors_off(
    case: dict[str, Tensor], draw_temperature: float, k: int = 0
) -> tuple[float, float]:
    """The largest distance, in standard errors, of the mean over ``DRAWS`` seeded draws (from
    the teacher at ``draw_temperature``, with an exact head of ``k`` tokens) of the loss and of
    each hidden-state gradient
    coordinate from the dense forward KL's at ``T``, and the threshold ``z`` it must not pass.

    By the central limit theorem each of the ``1 + R·H`` means is off by more than ``z``
    standard errors with probability ``2 (1 − Φ(z))``; ``z`` is set (Bonferroni) so that an
    unbiased estimator passes with probability at least ``1 − 1e-6`` over the choice of seeds.
    The seeds are fixed, so the outcome is deterministic."""
    inputs = {key: value for key, value in case.items() if key != "teacher_logits"}
    dense = fused_linear_kd_loss(**inputs, teacher_logits=case["teacher_logits"], temperature=T)
    dense_grad = torch.autograd.grad(dense, case["student_hidden"])[0]
    entropy = torch.special.entr(torch.softmax(case["teacher_logits"] / T, -1)).sum(-1)
    losses, hidden_grads = [], []
    for seed in range(DRAWS):
        generator = torch.Generator().manual_seed(seed)
        drawn = SampledLogits.from_logits(
            case["teacher_logits"], SAMPLES, draw_temperature, generator=generator, k=k
        )
        value = fused(case, SampledLogits(drawn.token_ids, drawn.counts, entropy, drawn.head))
        losses.append(value.detach())
        hidden_grads.append(torch.autograd.grad(value, case["student_hidden"])[0])
    compared = torch.cat([torch.stack(losses)[:, None], torch.stack(hidden_grads).flatten(1)], 1)
    expected = torch.cat([dense.detach().reshape(1), dense_grad.flatten()])
    mean, spread = compared.mean(0), compared.std(0)
    assert bool((spread > 0).all())
    off = float(((mean - expected).abs() / (spread / math.sqrt(DRAWS))).max())
    return off, NormalDist().inv_cdf(1 - 1e-6 / (2 * compared.shape[1]))


@pytest.mark.parametrize("k", [0, 3], ids=["samples", "head+samples"])
def test_the_estimate_is_unbiased_over_many_draws(k: int) -> None:
    """The mean loss and hidden-state gradient over 2000 draws lie within z standard errors
    of the dense forward KL's (false-failure rate at most 1e-6, see standard_errors_off)."""
    off, z = standard_errors_off(make_case(4), T, k)
    assert off <= z, (off, z)


def test_the_unbiasedness_test_catches_a_biased_estimator() -> None:
    """Draws from the teacher at the wrong temperature (1.5 T, a broader q) are biased: the
    same statistic is far past z."""
    off, z = standard_errors_off(make_case(4), 1.5 * T)
    assert off > 2 * z, (off, z)


def test_draws_are_reproducible_and_follow_the_probabilities() -> None:
    log_probs = torch.tensor([[0.0, 0.7, 0.2, 0.1], [1.0, 0.0, 0.0, 0.0]]).log()
    uniforms = torch.rand(2, 5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids, counts = draw_samples(log_probs, uniforms)
    assert counts.sum(-1).tolist() == [5000, 5000]
    frequency = torch.zeros(2, 4, dtype=torch.float64).scatter_add_(1, ids, counts.double())
    frequency /= 5000
    assert frequency[0, 0] == 0 and frequency[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    # binomial standard error ≤ sqrt(0.25 / 5000) ≈ 0.007: 6 of them
    torch.testing.assert_close(frequency, log_probs.exp().double(), rtol=0, atol=0.042)
    again = draw_samples(log_probs, uniforms)
    assert torch.equal(again[0], ids) and torch.equal(again[1], counts)
    # chunking the rows does not change the draws (the uniforms decide)
    assert torch.equal(draw_samples(log_probs[:1], uniforms[:1])[0], ids[:1])


def test_a_head_leaves_its_tokens_out_of_the_draws() -> None:
    case = make_case(9)
    sampled = draw(case, 0, k=4)
    head = sampled.head.token_ids
    drawn = torch.where(sampled.counts > 0, sampled.token_ids, -1)
    assert not bool((drawn.unsqueeze(-1) == head.unsqueeze(-2)).any())
    ids, weights = sampled.estimate(torch.float64)
    assert ids.shape[-1] == 4 + SAMPLES
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, ROWS // 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="k must be below the vocabulary"):
        draw(case, 0, k=VOCAB)


def test_from_logits_entropy_is_exact() -> None:
    logits = torch.tensor([[3.0, 1.0, float("-inf"), -1.0]], dtype=torch.float64)
    sampled = SampledLogits.from_logits(logits, 4, 2.0, generator=torch.Generator())
    q = torch.softmax(logits / 2.0, -1)
    expected = -(q[q > 0] * q[q > 0].log()).sum()
    torch.testing.assert_close(sampled.entropy[0], expected)
    assert 2 not in sampled.token_ids[sampled.counts > 0].tolist()


@pytest.mark.parametrize(
    ("divergence", "beta"), [("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 1.0), ("tvd", 0.5)]
)
def test_other_divergences_are_refused(divergence: str, beta: float) -> None:
    case = make_case(5)
    with pytest.raises(ValueError, match=r"divergence must be one of .*SampledLogits"):
        fused(case, draw(case, 0), divergence=divergence, beta=beta)


def test_jsd_with_beta_0_is_forward_kl() -> None:
    case = make_case(6)
    sampled = draw(case, 0)
    torch.testing.assert_close(
        fused(case, sampled, divergence="jsd", beta=0.0), fused(case, sampled)
    )


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"token_ids": lambda s: s.token_ids.int()}, TypeError, "token_ids must be an int64"),
        ({"counts": lambda s: s.counts.double()}, TypeError, "counts must be an integer"),
        ({"entropy": lambda s: s.entropy.long()}, TypeError, "entropy must be a floating"),
        ({"token_ids": lambda s: s.token_ids[..., :2]}, ValueError, "must both have shape"),
        ({"entropy": lambda s: s.entropy[:1]}, ValueError, "entropy must have shape"),
        ({"token_ids": lambda s: s.token_ids + VOCAB}, ValueError, r"must be in \[0, 13\)"),
        ({"counts": lambda s: s.counts * 0}, ValueError, "at least one draw"),
        ({"counts": lambda s: -s.counts}, ValueError, "non-negative"),
        ({"entropy": lambda s: s.entropy - 1e3}, ValueError, "entropies"),
        (
            {
                "token_ids": lambda s: torch.zeros_like(s.token_ids),
                "counts": lambda s: torch.ones_like(s.counts),
            },
            ValueError,
            "repeat a drawn id",
        ),
    ],
)
def test_bad_sampled_targets_raise_clear_errors(change: dict, error: type, match: str) -> None:
    case = make_case(7)
    sampled = draw(case, 0)
    fields = {"token_ids": sampled.token_ids, "counts": sampled.counts, "entropy": sampled.entropy}
    for key, make in change.items():
        fields[key] = make(sampled)
    with pytest.raises(error, match=match):
        fused(case, SampledLogits(**fields))
