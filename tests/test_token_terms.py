"""Token terms on a causal LM's ``[B, L, V]`` logits, one per family (dense ``logits``,
``labels``, ``logits_labels``, ``multi_teacher``, fused ``hidden_states``, cache-backed): each
reads only the positions whose label is valid (not -100, ``attention_mask`` 1) and divides its
summed loss by the batch's ``TokenNormalizer``; terms on sample rows are unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from torchkd import losses
from torchkd.distiller import Distiller, Term
from torchkd.forward import select_logits
from torchkd.lm import IGNORE_INDEX, TOKEN_NORMALIZER, TokenNormalizer, next_token_labels
from torchkd.losses import TopKLogits

T = 2.0
VOCAB = 61
LENGTHS = (6, 4, 2)
TERMS = {
    "kd": Term("t", "kd", temperature=T),
    "jsd": Term("t", "jsd", temperature=T),
    "dist": Term("t", "dist", temperature=T),
    "ce": Term("t", "ce"),
    "hinton": Term("t", "hinton", temperature=T),
    "dkd": Term("t", "dkd", temperature=T),
    "uld": Term("t", "uld", temperature=T),
    "multi_teacher_kd": Term("t", "multi_teacher_kd", temperature=T),
    "fused": Term("t", "fused_linear_kd", temperature=T, loss_kwargs={"hard_label_weight": 0.5}),
    "cache": Term("t", "fused_linear_kd", teacher="cache", temperature=T),
}
DENSE = [name for name in TERMS if name not in ("fused", "cache")]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def token_batch(teacher: nn.Module, width: int = max(LENGTHS), junk_labels: bool = False) -> dict:
    """Right-padded sequences of ``LENGTHS`` valid tokens (the first row's first label is a
    prompt position, -100) padded to ``width`` with random tokens; ``junk_labels`` gives the
    padding positions valid-looking labels, which only the attention mask excludes. The
    teacher's top-k (a cache) is added."""
    ids = torch.randint(0, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=seeded(1))
    padding = torch.randint(0, VOCAB, (len(LENGTHS), width - max(LENGTHS)), generator=seeded(2))
    input_ids = torch.cat([ids, padding], dim=1)  # the same valid tokens at every width
    mask = (torch.arange(width) < torch.tensor(LENGTHS)[:, None]).long()
    labels = next_token_labels(input_ids, mask)
    labels[0, 0] = IGNORE_INDEX
    if junk_labels:
        junk = torch.randint(0, VOCAB, labels.shape, generator=seeded(3))
        labels = torch.where(mask.bool(), labels, junk)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    with torch.no_grad():
        logits = select_logits(teacher(**inputs), None)
        sparse = TopKLogits.from_logits(logits, k=5, temperature=T)
    return {
        "inputs": inputs,
        "labels": labels,
        "teacher_topk_ids": sparse.token_ids,
        "teacher_topk_log_probs": sparse.log_probs,
        "teacher_topk_tail": sparse.tail_log_mass,
    }


def term_value(
    distiller: Distiller, batch: dict, normalizer: TokenNormalizer | None = None
) -> tuple[Tensor, list[Tensor]]:
    """The term's value and the student's gradients of it."""
    distiller.student.zero_grad()
    batch = batch if normalizer is None else {**batch, TOKEN_NORMALIZER: normalizer}
    value = distiller(batch).terms["t"]
    value.backward()
    return value.detach(), [p.grad.clone() for p in distiller.student.parameters()]


@pytest.fixture
def models(tiny_causal_lm: Callable[..., nn.Module]) -> tuple[nn.Module, nn.Module]:
    return tiny_causal_lm(0), tiny_causal_lm(1, hidden_size=24)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_padding_positions_do_not_change_the_term(
    models: tuple[nn.Module, nn.Module], name: str
) -> None:
    """Three more padding positions per row, with random tokens and valid-looking labels:
    the same value and gradients (causal attention: the valid positions' logits are equal)."""
    student, teacher = models
    distiller = Distiller(student, teacher, [TERMS[name]])
    narrow = token_batch(teacher)
    distiller.build(narrow)
    value, grads = term_value(distiller, narrow)
    padded, padded_grads = term_value(distiller, token_batch(teacher, 9, junk_labels=True))
    torch.testing.assert_close(padded, value, rtol=1e-10, atol=1e-14)
    for got, expected in zip(padded_grads, grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    assert value > 0


@pytest.mark.parametrize("name", DENSE)
def test_dense_term_is_its_loss_on_the_valid_rows(
    models: tuple[nn.Module, nn.Module], name: str
) -> None:
    student, teacher = models
    term = TERMS[name]
    distiller = Distiller(student, teacher, [term])
    batch = token_batch(teacher)
    distiller.build(batch)
    value, _ = term_value(distiller, batch)
    valid = batch["labels"] != IGNORE_INDEX
    with torch.no_grad():
        s = student(**batch["inputs"]).logits[valid]
        t = teacher(**batch["inputs"]).logits[valid]
    labels = batch["labels"][valid]
    loss = losses.create(term.loss)
    signature = losses.entry(term.loss).signature
    if signature == "labels":
        expected = loss(s, labels)
    elif signature == "logits":
        expected = loss(s, t, temperature=T)
    elif signature == "logits_labels":
        expected = loss(s, t, labels, temperature=T)
    else:
        expected = loss(s, [t], labels=labels, temperature=T)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-14)
    assert int(valid.sum()) < valid.numel() - 3  # prompt and padding positions were left out


@pytest.mark.parametrize("name", sorted(TERMS))
def test_token_normalizer_divides_the_summed_term(
    models: tuple[nn.Module, nn.Module], name: str
) -> None:
    """10 tokens over 2 micro-batches and 2 processes: the summed loss / 2.5. (Values only:
    the Llama's RMSNorm runs in float32, so its gradients round differently at another
    scale; test_token_accumulation and test_token_ranks compare float64 gradients.)"""
    student, teacher = models
    distiller = Distiller(student, teacher, [TERMS[name]])
    batch = token_batch(teacher)
    distiller.build(batch)
    per_token = distiller(batch).terms["t"]
    normalizer = TokenNormalizer(tokens=10, micro_batches=2, processes=2)
    scaled = distiller({**batch, TOKEN_NORMALIZER: normalizer}).terms["t"]
    factor = int((batch["labels"] != IGNORE_INDEX).sum()) / 2.5
    torch.testing.assert_close(scaled, per_token * factor, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", DENSE)
def test_a_share_without_valid_tokens_gives_zero(
    models: tuple[nn.Module, nn.Module], name: str
) -> None:
    """A process's micro-batch of prompt and padding only: exactly 0, with a zero gradient
    reaching every student parameter (DDP needs the graph)."""
    student, teacher = models
    distiller = Distiller(student, teacher, [TERMS[name]])
    batch = token_batch(teacher)
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    distiller.build(batch)
    value, grads = term_value(distiller, batch, TokenNormalizer(tokens=10, processes=2))
    assert value.item() == 0.0 and all(not grad.any() for grad in grads)


def test_a_loss_without_mask_gets_the_valid_rows(models: tuple[nn.Module, nn.Module]) -> None:
    student, teacher = models
    shapes = []

    def loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        shapes.append(tuple(student_logits.shape))
        return losses.kd_loss(student_logits, teacher_logits, temperature=temperature)

    distiller = Distiller(student, teacher, [Term("t", loss, signature="logits", temperature=T)])
    batch = token_batch(teacher)
    distiller.build(batch)
    shapes.clear()
    per_token = distiller(batch).terms["t"]
    scaled = distiller({**batch, TOKEN_NORMALIZER: TokenNormalizer(tokens=4)}).terms["t"]
    valid = int((batch["labels"] != IGNORE_INDEX).sum())
    assert shapes == [(valid, VOCAB)] * 2
    torch.testing.assert_close(scaled, per_token * valid / 4, rtol=1e-12, atol=0)


def test_a_summed_term_is_not_rescaled(models: tuple[nn.Module, nn.Module]) -> None:
    student, teacher = models
    term = Term("t", "kd", temperature=T, loss_kwargs={"reduction": "sum"})
    distiller = Distiller(student, teacher, [term])
    batch = token_batch(teacher)
    distiller.build(batch)
    summed, _ = term_value(distiller, batch)
    normalized, _ = term_value(distiller, batch, TokenNormalizer(tokens=10))
    assert torch.equal(summed, normalized)


def test_unlabeled_token_batch_reads_the_attention_mask(
    models: tuple[nn.Module, nn.Module],
) -> None:
    student, teacher = models
    distiller = Distiller(student, teacher, [TERMS["kd"]])
    batch = {"inputs": token_batch(teacher)["inputs"]}
    distiller.build(batch)
    value, _ = term_value(distiller, batch)
    kept = batch["inputs"]["attention_mask"].bool()
    with torch.no_grad():
        s, t = (model(**batch["inputs"]).logits[kept] for model in (student, teacher))
    torch.testing.assert_close(value, losses.kd_loss(s, t, temperature=T), rtol=1e-12, atol=0)


def test_sample_rows_are_unchanged_by_a_token_normalizer() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    distiller = Distiller(student, teacher, [TERMS["kd"], Term("ce", "ce")])
    batch = {"inputs": torch.randn(8, 4, dtype=torch.float64), "labels": torch.arange(8) % 3}
    distiller.build(batch)
    plain = distiller(batch).terms
    normalized = distiller({**batch, TOKEN_NORMALIZER: TokenNormalizer(tokens=3)}).terms
    assert all(torch.equal(plain[name], normalized[name]) for name in plain)
    with torch.no_grad():
        expected = losses.kd_loss(student(batch["inputs"]), teacher(batch["inputs"]), temperature=T)
    torch.testing.assert_close(plain["t"], expected, rtol=0, atol=0)


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.embed(input_ids).tanh()


class TensorBodyLM(nn.Module):
    """A causal LM whose body returns a plain tensor ``[B, L, H]`` (no ``ModelOutput``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = _Body(), nn.Linear(8, VOCAB)

    def get_decoder(self) -> nn.Module:
        return self.body

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head(self.body(input_ids))


def test_fused_term_beside_a_logit_term_reads_a_tensor_body_whole() -> None:
    """With a logit term the models run in full and the body's output is kept by a hook: all
    of a plain tensor, as the body-only run reads it."""
    torch.manual_seed(0)
    student, teacher = TensorBodyLM().double(), TensorBodyLM().double()
    batch = token_batch(teacher)
    alone = Distiller(student, teacher, [TERMS["fused"]])
    beside = Distiller(student, teacher, [TERMS["fused"], Term("ce", "ce")])
    for distiller in (alone, beside):
        distiller.build(batch)
    torch.testing.assert_close(beside(batch).terms["t"], alone(batch).terms["t"], rtol=0, atol=0)
