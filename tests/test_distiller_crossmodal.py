"""Cross-modal distillation: teachers read ``batch[teacher_inputs_key]``, the student
``batch[inputs_key]``. Each term family equals the term computed by hand on the two separate
forwards (float64); the same key is today's path; evaluation's teacher metrics use the
teacher's inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.distiller import Distiller, Term
from torchkd.losses import rkd_loss
from torchkd.train import evaluate

CLASSES = 3


class Signal(nn.Module):
    """The student's modality: ``[B, 1, 8]`` -> ``flat`` [B, 32] -> ``logits`` [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.flat = nn.Flatten()
        self.head = nn.Linear(32, CLASSES)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.head(self.flat(torch.relu(self.conv(inputs))))


class Tokens(nn.Module):
    """The teacher's modality: ``{"input_ids": [B, 5], "attention_mask"}`` -> ``body``
    [B, 5, 16] -> mean over the real tokens [B, 16] -> ``logits`` [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, CLASSES)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.body(self.embed(input_ids))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.pooled(input_ids, attention_mask))


def models() -> tuple[Signal, Tokens]:
    torch.manual_seed(0)
    return Signal().double(), Tokens().double()


def cross_batch(size: int = 6, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, 5, dtype=torch.long)
    mask[::2, 3:] = 0
    return {
        "inputs": torch.randn(size, 1, 8, generator=generator, dtype=torch.float64),
        "teacher_inputs": {
            "input_ids": torch.randint(0, 20, (size, 5), generator=generator),
            "attention_mask": mask,
        },
        "labels": torch.randint(0, CLASSES, (size,), generator=generator),
    }


def distil(student: nn.Module, teacher: nn.Module, term: Term, batch: dict) -> Distiller:
    distiller = Distiller(student, teacher, [term], teacher_inputs_key="teacher_inputs")
    distiller.build(batch)
    return distiller.double()


def teacher_pooled(teacher: Tokens, batch: dict) -> Tensor:
    with torch.no_grad():
        return teacher.pooled(**batch["teacher_inputs"])


def test_logits_term_reads_each_sides_own_inputs() -> None:
    student, teacher = models()
    batch = cross_batch()
    distiller = distil(student, teacher, Term("kd", "kd", loss_kwargs={"temperature": 2.0}), batch)
    value = distiller(batch).terms["kd"]
    with torch.no_grad():
        teacher_logits = teacher(**batch["teacher_inputs"])
    student_log = F.log_softmax(student(batch["inputs"]) / 2.0, -1)
    teacher_probs = F.softmax(teacher_logits / 2.0, -1)
    expected = (teacher_probs * (teacher_probs.log() - student_log)).sum(-1).mean() * 4.0
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    output = distiller(batch)
    torch.testing.assert_close(output.teacher_logits[0], teacher_logits)


def test_feature_term_with_an_adapter_across_shapes() -> None:
    """FitNets hint: ``mean((W s + b - t)^2)``, ``s`` the student's [B, 32] signal feature,
    ``t`` the teacher's [B, 16] token feature, ``W`` the built linear adapter."""
    student, teacher = models()
    batch = cross_batch()
    term = Term("hint", "hint", student="flat", teacher="head", adapter="linear")
    distiller = distil(student, teacher, term, batch)
    adapter = distiller.extras["hint"]["adapters"][0]
    value = distiller(batch).terms["hint"]
    flat = student.flat(torch.relu(student.conv(batch["inputs"])))
    with torch.no_grad():
        target = teacher(**batch["teacher_inputs"])
    expected = ((adapter(flat) - target) ** 2).mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_relation_term_across_modalities() -> None:
    """SP: ``||rownorm(S S^T) - rownorm(T T^T)||_F^2 / B^2`` of the two sides' features."""
    student, teacher = models()
    batch = cross_batch()
    distiller = distil(student, teacher, Term("sp", "sp", student="flat", teacher="head"), batch)
    value = distiller(batch).terms["sp"]
    flat = student.flat(torch.relu(student.conv(batch["inputs"])))
    with torch.no_grad():
        target = teacher(**batch["teacher_inputs"])

    def gram(features: Tensor) -> Tensor:
        return F.normalize(features @ features.T, dim=1)

    expected = ((gram(flat) - gram(target)) ** 2).sum() / len(flat) ** 2
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_embeddings_term_across_modalities() -> None:
    """RKD on the student's [B, 3] output and the teacher's pooled [B, 16] token embedding."""
    student, teacher = models()
    batch = cross_batch()

    class Pooled(nn.Module):
        def __init__(self, tokens: Tokens) -> None:
            super().__init__()
            self.tokens = tokens

        def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
            return self.tokens.pooled(input_ids, attention_mask)

    distiller = distil(student, Pooled(teacher), Term("rkd", "rkd"), batch)
    value = distiller(batch).terms["rkd"]
    expected = rkd_loss(student(batch["inputs"]), teacher_pooled(teacher, batch))
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_token_terms_keep_the_students_attention_mask() -> None:
    """Token features ``[B, L, H]`` keep the positions where the student's mask is 1."""
    torch.manual_seed(0)
    student, teacher = Tokens().double(), Tokens().double()
    batch = cross_batch()
    student_mask = torch.ones(6, 5, dtype=torch.long)
    student_mask[:, 4] = 0
    batch["inputs"] = {"input_ids": batch["teacher_inputs"]["input_ids"].flip(1)}
    batch["inputs"]["attention_mask"] = student_mask
    distiller = distil(
        student, teacher, Term("hint", "hint", student="body", teacher="body"), batch
    )
    value = distiller(batch).terms["hint"]
    keep = student_mask.bool()
    student_body = student.body(student.embed(batch["inputs"]["input_ids"]))
    with torch.no_grad():
        teacher_body = teacher.body(teacher.embed(batch["teacher_inputs"]["input_ids"]))
    adapter = distiller.extras["hint"]["adapters"][0]
    expected = ((adapter(student_body)[keep] - teacher_body[keep]) ** 2).mean()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_same_key_is_the_single_input_path() -> None:
    student, _ = models()
    torch.manual_seed(1)
    teacher = Signal().double()
    batch = cross_batch()
    terms = [Term("kd", "kd"), Term("hint", "hint", student="flat", teacher="flat")]
    values = []
    for key in (None, "inputs"):
        torch.manual_seed(2)  # the same adapter initialisation
        distiller = Distiller(student, teacher, terms, teacher_inputs_key=key)
        distiller.build(batch)
        distiller.double()
        assert distiller.teacher_inputs_key == "inputs"
        values.append(distiller(batch))
    assert values[0].terms.keys() == values[1].terms.keys()
    for name in values[0].terms:
        assert torch.equal(values[0].terms[name], values[1].terms[name])


def test_a_missing_teacher_entry_is_named() -> None:
    student, teacher = models()
    batch = cross_batch()
    distiller = distil(student, teacher, Term("kd", "kd"), batch)
    del batch["teacher_inputs"]
    with pytest.raises(KeyError, match=r"no 'teacher_inputs' entry \(teacher_inputs_key"):
        distiller(batch)


def test_on_policy_refuses_other_teacher_inputs() -> None:
    student, teacher = models()
    with pytest.raises(ValueError, match=r"teacher_inputs_key='teacher_inputs'"):
        Distiller(
            student,
            teacher,
            [Term("kd", "kd")],
            teacher_inputs_key="teacher_inputs",
            on_policy=lambda batch, **_: batch,
        )


def test_evaluation_scores_the_teacher_on_its_own_inputs() -> None:
    student, teacher = models()
    batch = cross_batch()
    distiller = distil(student, teacher, Term("kd", "kd"), batch)
    metrics = evaluate(distiller, [batch])
    with torch.no_grad():
        teacher_logits = teacher(**batch["teacher_inputs"])
    expected = 100.0 * (teacher_logits.argmax(-1) == batch["labels"]).double().mean()
    assert metrics["teacher_top1"] == pytest.approx(float(expected))
