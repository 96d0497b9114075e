"""Token terms under gradient accumulation (fused, and dense logit terms on ``[B, L, V]``):
the loop's token normalizer makes an accumulated step on sequences of uneven length equal the
step of the one large batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchkd.distiller import Distiller, Term
from torchkd.lm import next_token_labels
from torchkd.train import fit
from torchkd.train.config import TrainConfig

LENGTHS = (8, 2, 7, 3, 1, 8, 5, 4)  # valid tokens per sequence, very uneven across micro-batches


def samples(vocab: int = 61, width: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(5)
    rows = []
    for index, length in enumerate(LENGTHS):
        input_ids = torch.randint(0, vocab, (width,), generator=generator)
        mask = (torch.arange(width) < length).long()
        rows.append(
            {
                "inputs": {"input_ids": input_ids, "attention_mask": mask},
                "labels": next_token_labels(input_ids, mask),
                "index": torch.tensor(index),
            }
        )
    return rows


TERMS = {  # every token-term family: fused, dense logits, labels, logits + labels, teachers
    "fused": [
        Term("kd", "fused_linear_kd", loss_kwargs={"hard_label_weight": 0.5}, temperature=2.0)
    ],
    "dense": [
        Term("kd", "kd", temperature=2.0),
        Term("ce", "ce", weight=0.5),
        Term("dkd", "dkd", temperature=2.0, weight=0.25),
        Term("multi", "multi_teacher_kd", temperature=2.0, weight=0.25),
    ],
}


def gradient(distiller: Distiller, batch: dict) -> list[Tensor]:
    distiller.student.zero_grad()
    distiller(batch).loss.backward()
    return [p.grad.clone() for p in distiller.student.parameters()]


@pytest.mark.parametrize("terms", sorted(TERMS))
def test_accumulated_step_equals_one_large_batch(
    tiny_causal_lm: Callable[..., nn.Module], tmp_path: Path, terms: str
) -> None:
    student, teacher = tiny_causal_lm(0), tiny_causal_lm(1, hidden_size=24)
    data = samples()
    whole = next(iter(DataLoader(data, batch_size=len(data))))
    distiller = Distiller(student, teacher, TERMS[terms])
    distiller.build(whole)
    expected = gradient(distiller, whole)
    micro = list(DataLoader(data, batch_size=2))
    naive = [sum(g) / 4 for g in zip(*(gradient(distiller, b) for b in micro), strict=True)]
    assert not torch.allclose(naive[0], expected[0], rtol=1e-3)  # per-micro-batch means differ
    student.zero_grad()

    before = [p.detach().clone() for p in student.parameters()]
    config = TrainConfig(
        epochs=1,
        optimizer={"name": "sgd", "lr": 1.0, "momentum": 0.0},
        grad_accum_steps=4,
        device="cpu",
        progress=False,
        checkpoint_every_epochs=1,
    )
    fit(distiller, DataLoader(data, batch_size=2), micro, config, tmp_path / "run")
    for old, new, grad in zip(before, student.parameters(), expected, strict=True):
        torch.testing.assert_close(old - new.detach(), grad, rtol=1e-9, atol=1e-13)
