"""Every token-term family trained on 2 processes whose valid-token counts differ on purpose,
per rank and per micro-batch, against one process on the same global batches.

The data: 16 right-padded sequences (``LENGTHS``), their padding positions given random tokens
and valid-looking labels (only the attention mask excludes them), the first position of two
sequences a prompt (-100), and a cached teacher top-k. One optimizer step is a global batch of
8 sequences: on 2 processes, 2 micro-batches of 2 sequences per rank (:func:`counts`: the
valid tokens of each); on one process, the 8 as one batch.

Under torchrun: ``token_ranks.py OUT_DIR``: the 2-process run, rank 0 saving the final student
as ``OUT_DIR/ranks.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from torchkd.config import TrainConfig
from torchkd.data.batching import batch_loader
from torchkd.distiller import Distiller, Term
from torchkd.lm import IGNORE_INDEX, next_token_labels
from torchkd.losses import TopKLogits
from torchkd.train import fit
from torchkd.train.distributed import end_process

if __package__:
    from . import distributed_cases as cases
else:  # run as a script (torchrun): this folder is on the path
    import distributed_cases as cases  # type: ignore[no-redef]

T = 2.0
# Valid labels per sequence are LENGTH - 1 (the last position has no next token).
LENGTHS = (6, 6, 2, 1, 6, 4, 2, 1, 1, 1, 6, 6, 3, 1, 6, 4)
PROMPTS = (0, 10)  # sequences whose first label is a prompt position
EPOCHS = 2  # 2 steps an epoch: K = 4 optimizer steps
MICRO_BATCH, RANKS, GROUP = 2, 2, 2  # sequences per rank and micro-batch; processes; micro-batches


class UnevenSequences:
    """The 16 sequences (module docstring), indexable by a list of rows (spec format)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(11)
        count, width = len(LENGTHS), max(LENGTHS)
        self.input_ids = torch.randint(cases.VOCAB, (count, width), generator=generator)
        self.mask = (torch.arange(width) < torch.tensor(LENGTHS)[:, None]).long()
        labels = next_token_labels(self.input_ids, self.mask)
        labels[list(PROMPTS), 0] = IGNORE_INDEX
        junk = torch.randint(cases.VOCAB, labels.shape, generator=generator)
        self.labels = torch.where(self.mask.bool(), labels, junk)
        teacher = torch.randn(count, width, cases.VOCAB, generator=generator, dtype=torch.float64)
        self.cache = TopKLogits.from_logits(teacher, k=3, temperature=T)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, rows: Any) -> dict[str, Any]:
        return {
            "inputs": {"input_ids": self.input_ids[rows], "attention_mask": self.mask[rows]},
            "labels": self.labels[rows],
            "index": torch.tensor(rows),
            "teacher_topk_ids": self.cache.token_ids[rows],
            "teacher_topk_log_probs": self.cache.log_probs[rows],
            "teacher_topk_tail": self.cache.tail_log_mass[rows],
        }


def counts() -> list[list[list[int]]]:
    """``[step][micro-batch][rank]``: the valid tokens of each share on 2 processes."""
    data = UnevenSequences()
    valid = ((data.labels != IGNORE_INDEX) & data.mask.bool()).sum(dim=1).tolist()
    share = [sum(valid[start : start + MICRO_BATCH]) for start in range(0, len(valid), 2)]
    steps = len(share) // (GROUP * RANKS)
    return [
        [share[(step * GROUP + g) * RANKS : (step * GROUP + g + 1) * RANKS] for g in range(GROUP)]
        for step in range(steps)
    ]


def distiller() -> Distiller:
    """A float64 causal-LM student, two teachers and one term of every token family."""
    torch.manual_seed(0)
    student = cases.PartsLM(6).double()
    teachers = [cases.PartsLM(8).double(), cases.PartsLM(7).double()]
    terms = [
        Term("kd", "kd", temperature=T),
        Term("jsd", "jsd", temperature=T, global_batch=True, weight=0.5),
        Term("ce", "ce", weight=0.5),
        Term("dkd", "dkd", temperature=T, weight=0.25),
        Term("multi", "multi_teacher_kd", temperature=T, weight=0.25),
        Term("fused", "fused_linear_kd", temperature=T, loss_kwargs={"hard_label_weight": 0.5}),
        Term("cache", "fused_linear_kd", teacher="cache", temperature=T, weight=0.5),
    ]
    return Distiller(student, teachers, terms)


def train(run_dir: Path, *, distributed: str, batch_size: int, grad_accum_steps: int) -> dict:
    """Train for ``EPOCHS`` (SGD, lr 0.5) on global batches of ``batch_size`` sequences and
    ``grad_accum_steps`` of them a step; the final student weights."""
    model = distiller()
    data = UnevenSequences()
    config = TrainConfig(
        epochs=EPOCHS,
        device="cpu",
        progress=False,
        distributed=distributed,
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0},
        grad_accum_steps=grad_accum_steps,
    )
    train_loader = batch_loader(data, batch_size, shuffle=False)
    fit(model, train_loader, batch_loader(data, 8, shuffle=False), config, run_dir)
    return cases.trained_state(model)


def one_process(run_dir: Path) -> dict[str, Tensor]:
    """The reference: one process, each step's 8 sequences as one batch."""
    size = MICRO_BATCH * RANKS * GROUP
    return train(run_dir, distributed="none", batch_size=size, grad_accum_steps=1)


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    state = train(
        out / "run", distributed="ddp", batch_size=MICRO_BATCH * RANKS, grad_accum_steps=GROUP
    )
    if dist.get_rank() == 0:
        torch.save(state, out / "ranks.pt")
    end_process(0)


if __name__ == "__main__":
    main(sys.argv[1:])
