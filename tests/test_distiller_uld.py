"""ULD terms of the Distiller between two tiny causal LMs whose vocabularies differ (61 and
80 entries; the same token ids are fed to both: no sequence alignment across tokenizers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from torchkd.distiller import Distiller, Term, TermError
from torchkd.lm import next_token_labels
from torchkd.losses import fused_linear_uld_loss, uld_loss

T = 2.0
STUDENT_VOCAB, TEACHER_VOCAB = 61, 80


def lm_batch(lengths: tuple[int, ...] = (6, 4, 2)) -> dict:
    """Right-padded sequences of token ids both models know."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, STUDENT_VOCAB, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    labels = next_token_labels(input_ids, mask)
    return {"inputs": {"input_ids": input_ids, "attention_mask": mask}, "labels": labels}


def models(tiny_causal_lm: Callable[..., nn.Module]) -> tuple[nn.Module, nn.Module]:
    student = tiny_causal_lm(0)
    teacher = tiny_causal_lm(1, vocab_size=TEACHER_VOCAB, hidden_size=24, num_hidden_layers=3)
    return student, teacher


def student_grads(model: nn.Module) -> list[Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


@pytest.mark.parametrize("loss", ["fused_linear_uld", "uld"])
def test_uld_term_equals_the_hand_call(tiny_causal_lm: Callable[..., nn.Module], loss: str) -> None:
    student, teacher = models(tiny_causal_lm)
    batch = lm_batch()
    kwargs = {"hard_label_weight": 0.5}
    term = Term("uld", loss, temperature=T, loss_kwargs=kwargs)
    distiller = Distiller(student, teacher, [term])
    distiller.build(batch)
    output = distiller(batch)
    output.loss.backward()
    through_distiller = student_grads(student)

    hidden = student.model(**batch["inputs"]).last_hidden_state
    with torch.no_grad():
        teacher_hidden = teacher.model(**batch["inputs"]).last_hidden_state
    by_hand = fused_linear_uld_loss(
        hidden,
        student.lm_head.weight,
        teacher_hidden,
        teacher.lm_head.weight,
        batch["labels"],
        temperature=T,
        **kwargs,
    )
    dense = uld_loss(
        student.lm_head(hidden),
        teacher.lm_head(teacher_hidden),
        batch["labels"],
        temperature=T,
        **kwargs,
    )
    torch.testing.assert_close(by_hand, dense, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(output.terms["uld"], by_hand, rtol=1e-10, atol=1e-14)
    by_hand.backward()
    for got, expected in zip(through_distiller, student_grads(student), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    assert by_hand > 0


def test_the_kd_losses_still_refuse_different_vocabularies(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    student, teacher = models(tiny_causal_lm)
    batch = lm_batch()
    with pytest.raises(TermError, match="61 classes but teacher 0's have 80"):
        distiller = Distiller(student, teacher, [Term("kd", "kd", temperature=T)])
        distiller.build(batch)
        distiller(batch)


def test_a_cached_top_k_teacher_of_all_but_one_token_gives_the_teachers_loss(
    tiny_causal_lm: Callable[..., nn.Module],
) -> None:
    from torchkd.losses import TopKLogits

    student, teacher = models(tiny_causal_lm)
    batch = lm_batch()
    with torch.no_grad():
        logits = teacher(**batch["inputs"]).logits.double()
    top = TopKLogits.from_logits(logits, TEACHER_VOCAB - 1, T)  # one tail token: exact
    cached = {
        **batch,
        "teacher_topk_ids": top.token_ids,
        "teacher_topk_log_probs": top.log_probs.float(),
        "teacher_topk_tail": top.tail_log_mass.float(),
    }
    options = {"temperature": T, "loss_kwargs": {"hard_label_weight": 0.5}}
    dense = Distiller(student, teacher, [Term("uld", "fused_linear_uld", **options)])
    dense.build(batch)
    expected = dense(batch).loss
    options["loss_kwargs"]["teacher_vocab_size"] = TEACHER_VOCAB
    reader = Distiller(student, None, [Term("uld", "fused_linear_uld", teacher="cache", **options)])
    reader.build(cached)
    torch.testing.assert_close(reader(cached).loss, expected, rtol=1e-5, atol=1e-6)
    del cached["teacher_topk_tail"], cached["teacher_topk_ids"]
    with pytest.raises(ValueError, match="teacher='cache'"):
        reader(cached)  # no cached teacher in the batch
