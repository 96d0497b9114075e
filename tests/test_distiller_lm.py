"""The Distiller on causal LMs: fused hidden-state terms, the teacher cache, hidden-state hints
with attention masks, on-policy preparation and the errors of each."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tolerances import cascade_sum_terms, float32_tolerance
from torch import Tensor, nn

from torchkd.distiller import Distiller, Term, TermError
from torchkd.lm import IGNORE_INDEX, TOKEN_NORMALIZER, TokenNormalizer, next_token_labels
from torchkd.losses import TopKLogits, fused_linear_kd_loss
from torchkd.models import create_model
from torchkd.schedules import Linear
from torchkd.train.evaluate import evaluate

T = 2.0
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 61,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def lm_batch(vocab: int = 61, lengths: tuple[int, ...] = (6, 4, 2), seed: int = 1) -> dict:
    """Right-padded sequences of the given valid lengths (spec format); one prompt-like
    position of the first row is ignored too."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.randint(0, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    labels = next_token_labels(input_ids, mask)
    labels[0, 0] = IGNORE_INDEX
    return {"inputs": {"input_ids": input_ids, "attention_mask": mask}, "labels": labels}


def student_grads(model: nn.Module) -> list[Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def dense_reference(student: nn.Module, teacher: nn.Module, batch: dict) -> Tensor:
    """Forward KL at T with T^2, averaged over valid tokens, from the full float64 logits."""
    labels = batch["labels"]
    student_logits = student(**batch["inputs"]).logits
    with torch.no_grad():
        teacher_logits = teacher(**batch["inputs"]).logits
    valid = labels != IGNORE_INDEX
    log_p = torch.log_softmax(student_logits[valid] / T, dim=-1)
    log_q = torch.log_softmax(teacher_logits[valid] / T, dim=-1)
    return T**2 * (log_q.exp() * (log_q - log_p)).sum() / valid.sum()


def test_fused_term_equals_the_hand_call_and_the_dense_reference(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    student = tiny_causal_lm(0)
    teacher = tiny_causal_lm(1, hidden_size=24, num_hidden_layers=3)
    batch = lm_batch()
    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd", temperature=T)])
    distiller.build(batch)
    output = distiller(batch)
    output.loss.backward()
    through_distiller = student_grads(student)
    assert output.student_logits is None and output.teacher_logits == [None]
    assert output.num_samples == 3 and output.temperatures == {"kd": T}

    hidden = student.model(**batch["inputs"]).last_hidden_state
    with torch.no_grad():
        teacher_hidden = teacher.model(**batch["inputs"]).last_hidden_state
    by_hand = fused_linear_kd_loss(
        hidden,
        student.lm_head.weight,
        teacher_hidden,
        teacher.lm_head.weight,
        batch["labels"],
        temperature=T,
    )
    by_hand.backward()
    torch.testing.assert_close(output.terms["kd"], by_hand, rtol=1e-12, atol=1e-14)
    for got, expected in zip(through_distiller, student_grads(student), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)

    reference = dense_reference(student, teacher, batch)
    reference.backward()
    torch.testing.assert_close(output.terms["kd"], reference, rtol=1e-10, atol=1e-14)
    for got, expected in zip(through_distiller, student_grads(student), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    assert reference > 0


def test_fused_term_divides_by_the_token_normalizer(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    """The summed token loss is divided by N / (G W): 10 tokens over 2 micro-batches and 2
    processes give 2.5."""
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    batch = lm_batch()
    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd", temperature=T)])
    distiller.build(batch)
    per_token = distiller(batch).loss
    valid = int((batch["labels"] != IGNORE_INDEX).sum())
    normalizer = TokenNormalizer(tokens=10, micro_batches=2, processes=2)
    scaled = distiller({**batch, TOKEN_NORMALIZER: normalizer}).loss
    torch.testing.assert_close(scaled, per_token * valid / 2.5, rtol=1e-12, atol=0)
    with pytest.raises(
        ValueError, match=re.escape("must be a torchkd.lm.TokenNormalizer, got float")
    ):
        distiller({**batch, TOKEN_NORMALIZER: 2.5})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"tokens": 0}, "tokens must be a positive count, got 0.0"),
        ({"tokens": float("nan")}, "tokens must be a positive count"),
        ({"tokens": 4, "micro_batches": 0}, "micro_batches must be an int >= 1, got 0"),
        ({"tokens": 4, "processes": 1.5}, "processes must be an int >= 1, got 1.5"),
    ],
)
def test_a_token_normalizer_refuses_what_counts_nothing(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TokenNormalizer(**arguments)


def test_hidden_state_step_never_builds_logits(tiny_causal_lm: Callable[..., nn.Module]) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    calls: list[str] = []
    for name, model in (("student", student), ("teacher", teacher)):
        model.lm_head.register_forward_hook(lambda *_, name=name: calls.append(name))
    batch = lm_batch()
    terms = [
        Term("kd", "fused_linear_kd", temperature=T),
        Term("hint", "hint", student="model.layers.1", teacher="model.layers.1"),
    ]
    distiller = Distiller(student, teacher, terms)
    distiller.build(batch)
    distiller(batch).loss.backward()
    assert calls == []
    assert student.model.embed_tokens.weight.grad is not None
    # a logits-reading term makes the student run in full; the fused value is unchanged
    fused_only = distiller(batch).terms["kd"]
    both = Distiller(student, teacher, [*terms, Term("ce", "ce")])
    both.build(batch)
    calls.clear()
    output = both(batch)
    assert calls == ["student"] and output.student_logits.shape == (3, 6, 61)
    torch.testing.assert_close(output.terms["kd"], fused_only, rtol=1e-12, atol=1e-14)


def test_cache_term_equals_the_top_k_call_and_runs_no_teacher(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    batch = lm_batch()
    with torch.no_grad():
        sparse = TopKLogits.from_logits(teacher(**batch["inputs"]).logits, k=5, temperature=T)
    batch |= {
        "teacher_topk_ids": sparse.token_ids,
        "teacher_topk_log_probs": sparse.log_probs,
        "teacher_topk_tail": sparse.tail_log_mass,
    }
    runs: list[int] = []
    teacher.register_forward_pre_hook(lambda *_: runs.append(1))
    teacher.model.register_forward_pre_hook(lambda *_: runs.append(1))
    cached = Term("kd", "fused_linear_kd", teacher="cache", temperature=T)
    for teachers in (None, teacher):  # with a teacher model present it is not run either
        distiller = Distiller(student, teachers, [cached])
        distiller.build(batch)
        output = distiller(batch)
        output.loss.backward()
        got = student_grads(student)
        hidden = student.model(**batch["inputs"]).last_hidden_state
        expected = fused_linear_kd_loss(
            hidden, student.lm_head.weight, labels=batch["labels"], teacher_logits=sparse,
            temperature=T,
        )  # fmt: skip
        expected.backward()
        torch.testing.assert_close(output.terms["kd"], expected, rtol=1e-12, atol=1e-14)
        for a, b in zip(got, student_grads(student), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    assert runs == []


def test_hint_between_layers_of_different_width_uses_only_unmasked_positions(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    student = tiny_causal_lm(0)
    teacher = tiny_causal_lm(1, hidden_size=24, num_hidden_layers=3)
    batch = lm_batch()
    term = Term("hint", "hint", student="model.layers.1", teacher="model.layers.2")
    distiller = Distiller(student, teacher, [term])
    distiller.build(batch)
    adapter = distiller.extras["hint"]["adapters"][0]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (
        16,
        24,
    )
    value = distiller(batch).terms["hint"]

    outputs: dict[str, Tensor] = {}
    student.model.layers[1].register_forward_hook(lambda m, a, o: outputs.update(s=o))
    teacher.model.layers[2].register_forward_hook(lambda m, a, o: outputs.update(t=o))
    student(**batch["inputs"])
    with torch.no_grad():
        teacher(**batch["inputs"])
    mask = batch["inputs"]["attention_mask"].bool()
    squared = (adapter(outputs["s"]) - outputs["t"]) ** 2  # [B, L, 24]
    expected = squared[mask].mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-14)
    assert not torch.isclose(value, squared.mean(), rtol=1e-3)  # padding would change it


def test_prepare_calls_on_policy_in_training_only(tiny_causal_lm: Callable[..., nn.Module]) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    seen: list[dict[str, Any]] = []

    def on_policy(batch: dict, *, step: int, student: nn.Module, teachers: Any) -> dict:
        seen.append({"step": step, "student": student, "teachers": list(teachers)})
        return {**batch, "sampled": True}

    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd")], on_policy=on_policy)
    batch = lm_batch()
    assert distiller.prepare(batch, step=7)["sampled"] is True
    assert seen == [{"step": 7, "student": student, "teachers": [teacher]}]
    distiller.eval()
    assert distiller.prepare(batch, step=8) is batch and len(seen) == 1
    plain = Distiller(student, teacher, [Term("kd", "fused_linear_kd")])
    assert plain.prepare(batch, step=0) is batch


def _float64_nll(
    model: nn.Module, inputs: dict[str, Tensor], labels: Tensor, tokens: int
) -> tuple[float, float]:
    """The mean NLL of ``model``'s float32 logits over the valid tokens, computed in float64,
    and the bound of evaluate's float32 computation from the same logits: per token,
    ``−log_softmax(z)_y = lse(z) − z_y`` is off by ``≤ ε (2 max|z| + log V + V + 2)``; the
    float32 sum over the tokens by ``cascade_sum_terms(tokens) ε Σ nll``."""
    with torch.no_grad():
        logits = model(**inputs).logits.double().reshape(labels.numel(), -1)
    nll = F.cross_entropy(logits, labels, ignore_index=-100).item()
    classes = logits.shape[-1]
    per_token = float32_tolerance(
        2 * float(logits.abs().max()) + math.log(classes) + classes + 2, 1
    )
    return nll, per_token + float32_tolerance(cascade_sum_terms(tokens), nll)


def test_evaluate_reports_perplexity_of_valid_tokens(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    """The student's perplexity and the teacher's own, against float64 references."""
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    batch = lm_batch()
    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd", temperature=T)])
    distiller.build(batch)
    labels = batch["labels"].reshape(-1)
    tokens = int((labels != -100).sum())
    (nll, tolerance), (teacher_nll, teacher_tolerance) = (
        _float64_nll(model, batch["inputs"], labels, tokens) for model in (student, teacher)
    )
    for with_terms in (False, True):
        metrics = evaluate(distiller, [batch], with_terms=with_terms)
        # exp(nll ± δ) = exp(nll)(1 ± δ + O(δ²)): the NLL's absolute bound is the relative one
        assert metrics["perplexity"] == pytest.approx(math.exp(nll), rel=2 * tolerance)
        assert metrics["teacher_nll"] == pytest.approx(teacher_nll, rel=0, abs=teacher_tolerance)
        assert metrics["teacher_perplexity"] == pytest.approx(
            math.exp(teacher_nll), rel=2 * teacher_tolerance
        )
        assert metrics["samples"] == 3
    assert abs(teacher_nll - nll) > 1e-3  # the teacher's score is not the student's
    assert "terms/kd" in metrics


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_problem(tiny_causal_lm: Callable[..., nn.Module]) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    with pytest.raises(TermError, match="causal language model") as caught:
        Distiller(nn.Linear(4, 61), teacher, [Term("kd", "fused_linear_kd")])
    assert caught.value.field == "student"
    with pytest.raises(TermError, match="causal language model") as caught:
        Distiller(student, nn.Linear(4, 61), [Term("kd", "fused_linear_kd")])
    assert caught.value.field == "teacher"
    encoder = create_model("hf_encoder", config={**TINY_BERT})
    with pytest.raises(TermError, match="causal language model"):
        Distiller(encoder, teacher, [Term("kd", "fused_linear_kd")])
    with pytest.raises(TermError, match="learned") as caught:
        Distiller(student, teacher, [Term("kd", "fused_linear_kd", temperature="learned")])
    assert caught.value.field == "temperature"
    with pytest.raises(ValueError, match="'hidden_states' losses"):
        Distiller(student, teacher, [Term("kd", "kd", teacher="cache")])
    with pytest.raises(ValueError, match="student='logits'"):
        Distiller(student, teacher, [Term("kd", "fused_linear_kd", student="model.layers.1")])
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller(student, None, [Term("kd", "fused_linear_kd")])

    batch = lm_batch()
    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd")])
    distiller.build(batch)
    unlabeled = {"inputs": batch["inputs"]}
    with pytest.raises(ValueError, match=r"needs batch\['labels'\]"):
        distiller(unlabeled)
    cached = Distiller(student, None, [Term("kd", "fused_linear_kd", teacher="cache")])
    cached.build(batch)
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        cached(batch)


def test_fused_term_passes_bias_scale_softcap_and_scheduled_temperature(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1)
    student.lm_head = nn.Linear(16, 61, bias=True).double()  # a biased output layer
    student.config.logit_scale, teacher.config.final_logit_softcapping = 0.5, 3.0
    batch = lm_batch()
    schedule = Linear(start=1.0, end=3.0)
    distiller = Distiller(student, teacher, [Term("kd", "fused_linear_kd", temperature=schedule)])
    distiller.build(batch)
    distiller.set_progress(1, 2)
    output = distiller(batch)
    temperature = schedule(1, 2)
    assert output.temperatures == {"kd": pytest.approx(temperature)} and temperature != 1.0
    hidden = student.model(**batch["inputs"]).last_hidden_state
    with torch.no_grad():
        teacher_hidden = teacher.model(**batch["inputs"]).last_hidden_state
    expected = fused_linear_kd_loss(
        hidden,
        student.lm_head.weight,
        teacher_hidden,
        teacher.lm_head.weight,
        batch["labels"],
        student_bias=student.lm_head.bias,
        student_logit_scale=0.5,
        teacher_softcap=3.0,
        temperature=temperature,
    )
    torch.testing.assert_close(output.terms["kd"], expected, rtol=1e-12, atol=1e-14)
    plain = fused_linear_kd_loss(
        hidden, student.lm_head.weight, teacher_hidden, teacher.lm_head.weight, batch["labels"],
        temperature=temperature,
    )  # fmt: skip
    assert not torch.isclose(output.terms["kd"], plain, rtol=1e-3)
