"""How torchkd's numbers convert to TRL's, Liger-Kernel's and torchtune's (docs/token_kd.md,
"Conventions"): each peer's formula is re-derived here in a few lines of float64 torch from
its source (read, not imported: none of them is a test dependency), and torchkd's value is
converted to it by the rule the table states.

Sources read: TRL ``trl/experimental/gkd/gkd_trainer.py`` (``GKDTrainer.generalized_jsd_loss``),
Liger-Kernel ``src/liger_kernel/chunked_loss/jsd_loss.py`` and ``fused_linear_distillation.py``
(``LigerFusedLinearJSDLoss``; the β fix of PR #609, v0.5.6, 2025-03-14), torchtune
``torchtune/modules/loss/kd_losses.py`` (``ForwardKLLoss``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from torchkd.losses import fused_linear_kd_loss, jsd_loss, kd_loss, soft_ce_loss

IGNORE = -100
BATCH, SEQUENCE, HIDDEN, VOCAB = 2, 5, 6, 11


def randn(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def token_logits(vocab: int = VOCAB) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, S, V]`` student and teacher logits and labels with ignored positions."""
    labels = torch.randint(0, VOCAB, (BATCH, SEQUENCE), generator=torch.Generator().manual_seed(3))
    labels[0, :2] = IGNORE  # a prompt
    labels[1, -1] = IGNORE  # padding
    return (
        randn(BATCH, SEQUENCE, VOCAB, seed=1, scale=2.0),
        randn(BATCH, SEQUENCE, vocab, seed=2, scale=2.0),
        labels,
    )


# --------------------------------------------------------------------------- the peers' formulas
def generalized_jsd_terms(
    student_log_probs: Tensor, teacher_log_probs: Tensor, beta: float, fixed_endpoints: bool
) -> Tensor:
    """Per-class terms of β KL(q ‖ m) + (1 − β) KL(p ‖ m), m = β q + (1 − β) p (TRL and Liger
    since #609); β = 0 / 1 are KL(q ‖ p) / KL(p ‖ q) when ``fixed_endpoints``."""
    p, q = student_log_probs, teacher_log_probs
    if fixed_endpoints and beta == 0:
        return q.exp() * (q - p)
    if fixed_endpoints and beta == 1:
        return p.exp() * (p - q)
    log_m = torch.logsumexp(torch.stack([p + math.log1p(-beta), q + math.log(beta)]), dim=0)
    return beta * q.exp() * (q - log_m) + (1 - beta) * p.exp() * (p - log_m)


def trl_generalized_jsd(
    student: Tensor, teacher: Tensor, labels: Tensor | None, beta: float, temperature: float
) -> Tensor:
    """TRL's ``generalized_jsd_loss`` (reduction "batchmean"): no T²; the sum over the valid
    tokens divided by their number, or without labels by ``student.shape[0]`` (the batch)."""
    terms = generalized_jsd_terms(
        F.log_softmax(student / temperature, -1),
        F.log_softmax(teacher / temperature, -1),
        beta,
        fixed_endpoints=True,
    )
    if labels is None:
        return terms.sum() / terms.shape[0]
    valid = labels != IGNORE
    return terms[valid].sum() / valid.sum()


def liger_fused_jsd(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    weight_hard_loss: float = 0.5,
    weight_soft_loss: float = 0.5,
    before_v0_5_6: bool = False,
) -> Tensor:
    """``LigerFusedLinearJSDLoss`` on the logits ``h Wᵀ``: the student's logits zero-padded to
    the teacher's vocabulary after the division by T, JSD summed over the valid tokens / their
    number, no T², plus the hard-label CE of the unsoftened logits; before v0.5.6 the mixture
    was m = β p + (1 − β) q and β = 0 / 1 had no special case."""
    valid = labels.reshape(-1) != IGNORE
    flat_student = student.reshape(-1, student.shape[-1])
    flat_teacher = teacher.reshape(-1, teacher.shape[-1])
    hard = F.cross_entropy(flat_student, labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    softened = flat_student / temperature
    padding = flat_teacher.shape[-1] - softened.shape[-1]
    softened = torch.cat([softened, softened.new_zeros(softened.shape[0], padding)], -1)
    log_p = F.log_softmax(softened, -1)
    log_q = F.log_softmax(flat_teacher / temperature, -1)
    if before_v0_5_6:  # written with probabilities then, so β = 0 and 1 were defined
        log_m = (beta * log_p.exp() + (1 - beta) * log_q.exp()).log()
        terms = beta * log_q.exp() * (log_q - log_m) + (1 - beta) * log_p.exp() * (log_p - log_m)
    else:
        terms = generalized_jsd_terms(log_p, log_q, beta, fixed_endpoints=True)
    soft = terms.sum(-1)[valid].sum()
    return (weight_hard_loss * hard + weight_soft_loss * soft) / valid.sum()


def torchtune_forward_kl(student: Tensor, teacher: Tensor, labels: Tensor) -> Tensor:
    """torchtune's ``ForwardKLLoss``: −Σ_c q_c log p_c (a cross-entropy), averaged over the
    valid tokens; no temperature."""
    per_token = (F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(-1)
    valid = labels != IGNORE
    return -per_token[valid].sum() / valid.sum()


def assert_equal(actual: Tensor, expected: Tensor) -> None:
    """float64 against float64 on a few dozen terms: agreement to ~1e-15 relative."""
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- T²
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_dense_loss_over_t_squared_is_trls_generalized_jsd(beta: float) -> None:
    """The dense losses always apply T² (no switch): divide by T² to get TRL's number."""
    student, teacher, labels = token_logits()
    ours = jsd_loss(student, teacher, beta=beta, temperature=2.0, mask=labels != IGNORE)
    assert_equal(ours / 4.0, trl_generalized_jsd(student, teacher, labels, beta, 2.0))
    assert not torch.isclose(ours, trl_generalized_jsd(student, teacher, labels, beta, 2.0))


def test_fused_loss_without_t_squared_is_trls_generalized_jsd() -> None:
    hidden, weight = randn(BATCH, SEQUENCE, HIDDEN, seed=4), randn(VOCAB, HIDDEN, seed=5)
    teacher_hidden, teacher_weight = randn(BATCH, SEQUENCE, 7, seed=6), randn(VOCAB, 7, seed=7)
    _, _, labels = token_logits()
    ours = fused_linear_kd_loss(
        hidden,
        weight,
        teacher_hidden,
        teacher_weight,
        labels,
        divergence="jsd",
        beta=0.3,
        temperature=2.0,
        temperature_squared=False,
    )
    trl = trl_generalized_jsd(
        hidden @ weight.T, teacher_hidden @ teacher_weight.T, labels, 0.3, 2.0
    )
    assert_equal(ours, trl)


# --------------------------------------------------------------------------- normalization
def test_trl_without_labels_divides_by_the_batch_not_the_tokens() -> None:
    student, teacher, _ = token_logits()
    trl = trl_generalized_jsd(student, teacher, None, 0.5, 1.0)
    assert_equal(jsd_loss(student, teacher, reduction="sum") / BATCH, trl)
    assert_equal(jsd_loss(student, teacher) * SEQUENCE, trl)  # batchmean: per token


def test_kl_div_batchmean_on_token_logits_divides_by_the_batch() -> None:
    student, teacher, _ = token_logits()
    log_p, log_q = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    torch_batchmean = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    assert_equal(kd_loss(student, teacher) * SEQUENCE, torch_batchmean)
    assert_equal(kd_loss(student, teacher, reduction="sum") / BATCH, torch_batchmean)


# --------------------------------------------------------------------------- torchtune
def test_torchtunes_forward_kl_is_kd_plus_the_teachers_entropy() -> None:
    """torchtune's "forward KL" is a cross-entropy: torchkd's forward KL (at T = 1, or divided
    by T²) plus the teacher's entropy, i.e. torchkd's ``soft_ce_loss``."""
    student, teacher, labels = token_logits()
    valid = labels != IGNORE
    log_q = F.log_softmax(teacher, -1)
    entropy = -(log_q.exp() * log_q).sum(-1)[valid].mean()
    torchtune = torchtune_forward_kl(student, teacher, labels)
    assert_equal(kd_loss(student, teacher, mask=valid) + entropy, torchtune)
    assert_equal(
        kd_loss(student, teacher, mask=valid, temperature=3.0) / 9.0,
        kd_loss(student / 3.0, teacher / 3.0, mask=valid),
    )
    assert_equal(soft_ce_loss(student, teacher, mask=valid), torchtune)
    assert not torch.isclose(kd_loss(student, teacher, mask=valid), torchtune)


# --------------------------------------------------------------------------- Liger-Kernel
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ligers_soft_loss_is_the_fused_loss_without_t_squared(beta: float) -> None:
    """Since v0.5.6 Liger's β is torchkd's (and TRL's); with the hard term weighted 0 its soft
    loss (weight 1) is ``fused_linear_kd_loss(..., temperature_squared=False)``."""
    hidden, weight = randn(BATCH, SEQUENCE, HIDDEN, seed=8), randn(VOCAB, HIDDEN, seed=9)
    teacher_hidden, teacher_weight = randn(BATCH, SEQUENCE, 7, seed=10), randn(VOCAB, 7, seed=11)
    _, _, labels = token_logits()
    liger = liger_fused_jsd(
        hidden @ weight.T, teacher_hidden @ teacher_weight.T, labels, beta, 2.0, 0.0, 1.0
    )
    ours = fused_linear_kd_loss(
        hidden,
        weight,
        teacher_hidden,
        teacher_weight,
        labels,
        divergence="jsd",
        beta=beta,
        temperature=2.0,
        temperature_squared=False,
    )
    assert_equal(ours, liger)


def test_ligers_defaults_blend_half_hard_label_cross_entropy() -> None:
    """Liger's defaults (weight_hard_loss = weight_soft_loss = 0.5, no T²) are half of the
    fused loss with ``hard_label_weight=1, temperature_squared=False``; torchkd's default has
    no hard-label term (``hard_label_weight=0``) and T²."""
    hidden, weight = randn(BATCH, SEQUENCE, HIDDEN, seed=12), randn(VOCAB, HIDDEN, seed=13)
    teacher_hidden, teacher_weight = randn(BATCH, SEQUENCE, 7, seed=14), randn(VOCAB, 7, seed=15)
    _, _, labels = token_logits()
    liger = liger_fused_jsd(hidden @ weight.T, teacher_hidden @ teacher_weight.T, labels, 0.5, 2.0)
    options = {"divergence": "jsd", "beta": 0.5, "temperature": 2.0}
    blended = fused_linear_kd_loss(
        hidden,
        weight,
        teacher_hidden,
        teacher_weight,
        labels,
        **options,
        temperature_squared=False,
        hard_label_weight=1.0,
    )
    assert_equal(0.5 * blended, liger)
    default = fused_linear_kd_loss(
        hidden, weight, teacher_hidden, teacher_weight, labels, **options
    )
    assert not torch.isclose(default, liger)


def test_ligers_beta_before_v0_5_6_swaps_the_endpoints() -> None:
    """Before PR #609 (v0.5.6, 2025-03-14) Liger mixed m = β p_S + (1 − β) p_T: its β = 0 was
    torchkd's reverse KL (β = 1), its β = 1 the forward KL (β = 0); β = 0.5 agrees, and other β
    have no torchkd equivalent (neither β nor 1 − β)."""
    student, teacher, labels = token_logits()

    def old(beta: float) -> Tensor:
        return liger_fused_jsd(student, teacher, labels, beta, 1.0, 0.0, 1.0, before_v0_5_6=True)

    def ours(beta: float) -> Tensor:
        return jsd_loss(student, teacher, beta=beta, mask=labels != IGNORE)

    assert_equal(old(0.0), ours(1.0))
    assert_equal(old(1.0), ours(0.0))
    assert_equal(old(0.5), ours(0.5))
    assert not torch.isclose(old(0.3), ours(0.3)) and not torch.isclose(old(0.3), ours(0.7))


def test_liger_zero_pads_a_smaller_student_vocabulary_where_truncate_vocab_truncates() -> None:
    """Liger pads the student's logits with zeros (the padded entries get probability mass);
    ``truncate_vocab=True`` drops the teacher's extra entries instead. Liger's number is the
    dense loss on the zero-padded student logits."""
    student, teacher, labels = token_logits(vocab=VOCAB + 3)
    valid = labels != IGNORE
    hidden, weight = student, torch.eye(VOCAB, dtype=torch.float64)  # h Wᵀ = the logits
    liger = liger_fused_jsd(student, teacher, labels, 0.5, 2.0, 0.0, 1.0)
    padded = torch.cat([student, student.new_zeros(BATCH, SEQUENCE, 3)], -1)
    assert_equal(jsd_loss(padded, teacher, temperature=2.0, mask=valid) / 4.0, liger)
    truncated = fused_linear_kd_loss(
        hidden,
        weight,
        labels=labels,
        teacher_logits=teacher,
        divergence="jsd",
        temperature=2.0,
        temperature_squared=False,
        truncate_vocab=True,
    )
    assert_equal(
        truncated * 4.0, jsd_loss(student, teacher[..., :VOCAB], temperature=2.0, mask=valid)
    )
    assert not torch.isclose(truncated, liger)
