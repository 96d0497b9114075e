"""Cross-tokenizer terms of the Distiller between tiny Llama models: the teacher runs on its
own tokens (``teacher_inputs_key``), the aligned positions are compared, and a teacher with the
student's tokenizer through this path gives exactly the plain path's loss and gradients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from torchkd.data import create_dataset
from torchkd.data.shared_vocabulary import shared_vocabulary
from torchkd.distiller import Distiller, Term, TermError
from torchkd.losses import uld_loss

from .pair import STRINGS, STUDENT_VOCAB, TEACHER_VOCAB

T = 2.0
LOSSES = ["uld", "fused_linear_uld", "hybrid_uld"]


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("documents")
    for number, text in enumerate(STRINGS * 2):
        (root / f"doc{number:02d}.txt").write_text(f"{text} ({number})", encoding="utf-8")
    return root


def batch_of(documents: Path, directory: Path, teacher: str | None) -> dict:
    settings = {"files": str(documents / "*.txt"), "tokenizer": directory / "student"}
    if teacher is not None:
        settings["teacher_tokenizer"] = directory / teacher
    dataset = create_dataset(
        "text", "train", seq_len=16, cache=documents / "cache", val_fraction=0.1, **settings
    )
    return dataset[list(range(min(len(dataset), 4)))]


def models(tiny_causal_lm: Callable[..., nn.Module], teacher_vocab: int):
    student = tiny_causal_lm(0, vocab_size=STUDENT_VOCAB, max_position_embeddings=64)
    teacher = tiny_causal_lm(
        1, vocab_size=teacher_vocab, hidden_size=24, max_position_embeddings=64
    )
    return student, teacher


def loss_kwargs(loss: str, student, teacher) -> dict:
    kwargs: dict = {"hard_label_weight": 0.5}
    if loss == "hybrid_uld":
        kwargs["shared_ids"] = shared_vocabulary(student, teacher)
    return kwargs


def run(distiller: Distiller, batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    distiller.build(batch)
    output = distiller(batch)
    output.loss.backward()
    grads = [p.grad.clone() for p in distiller.student.parameters() if p.grad is not None]
    distiller.student.zero_grad()
    return output.loss.detach(), grads


@pytest.mark.parametrize("loss", [*LOSSES, "hint"])
def test_the_students_tokenizer_through_the_aligned_path_gives_the_plain_loss(
    tiny_causal_lm, tokenizer_pair, documents: Path, loss: str
) -> None:
    student_tokenizer, _, directory = tokenizer_pair
    plain_batch = batch_of(documents, directory, None)
    paired_batch = batch_of(documents, directory, "student")
    assert torch.equal(paired_batch["teacher_positions"][0], torch.arange(16))
    kwargs = loss_kwargs(loss, student_tokenizer, student_tokenizer)
    values = []
    for batch, key in ((plain_batch, None), (paired_batch, "teacher_inputs")):
        student, teacher = models(tiny_causal_lm, STUDENT_VOCAB)
        if loss == "hint":  # a feature term on each model's final norm, through an adapter
            term = Term("x", "hint", student="model.norm", teacher="model.norm")
        else:
            term = Term("x", loss, temperature=T, loss_kwargs=kwargs)
        values.append(run(Distiller(student, teacher, [term], teacher_inputs_key=key), batch))
    (plain, plain_grads), (aligned, aligned_grads) = values
    assert plain > 0
    torch.testing.assert_close(aligned, plain, rtol=1e-12, atol=0)
    for got, expected in zip(aligned_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_the_teacher_reads_its_own_tokens_at_the_aligned_positions(
    tiny_causal_lm, tokenizer_pair, documents: Path
) -> None:
    _, _, directory = tokenizer_pair
    batch = batch_of(documents, directory, "teacher")
    assert int(batch["teacher_inputs"]["input_ids"].max()) < TEACHER_VOCAB
    # the teacher's smaller vocabulary spells the same text in more tokens
    assert batch["teacher_inputs"]["input_ids"].shape[1] > 16
    assert (batch["teacher_positions"].amax(dim=1) > 15).all()
    student, teacher = models(tiny_causal_lm, TEACHER_VOCAB)
    term = Term("uld", "uld", temperature=T)
    distiller = Distiller(student, teacher, [term], teacher_inputs_key="teacher_inputs")
    distiller.build(batch)
    value = distiller(batch).terms["uld"]
    with torch.no_grad():
        student_logits = student(**batch["inputs"]).logits
        teacher_logits = teacher(**batch["teacher_inputs"]).logits
    rows, columns = (batch["teacher_positions"] >= 0).nonzero(as_tuple=True)
    by_hand = uld_loss(
        student_logits[rows, columns],
        teacher_logits[rows, batch["teacher_positions"][rows, columns]],
        batch["labels"][rows, columns],
        temperature=T,
    )
    torch.testing.assert_close(value, by_hand, rtol=1e-12, atol=0)


def test_position_by_position_losses_and_a_missing_key_are_refused(
    tiny_causal_lm, tokenizer_pair, documents: Path
) -> None:
    _, _, directory = tokenizer_pair
    batch = batch_of(documents, directory, "student")
    student, teacher = models(tiny_causal_lm, STUDENT_VOCAB)
    for loss in ("kd", "fused_linear_kd"):
        distiller = Distiller(
            student, teacher, [Term("kd", loss, temperature=T)], teacher_inputs_key="teacher_inputs"
        )
        distiller.build(batch)
        with pytest.raises(TermError, match="compares the two sides position by position"):
            distiller(batch)
    distiller = Distiller(student, teacher, [Term("uld", "uld")], teacher_inputs_key="other")
    with pytest.raises(KeyError, match="no 'other' entry"):
        distiller.build(batch)
