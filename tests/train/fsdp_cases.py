"""Runs of the FSDP tests (``test_fsdp.py``): a tiny float64 Llama pair distilled with the
fused hidden-state loss, sharded per decoder layer; built the same way on one process and on
several, so their final students can be compared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record

from torchkd.config import TrainConfig
from torchkd.data.batching import batch_loader
from torchkd.distiller import Distiller, Term
from torchkd.train import fit
from torchkd.train.distributed import end_process

from . import distributed_cases as cases


def tiny_llama(hidden: int, *, tied: bool) -> nn.Module:
    """A float64 2-layer Llama over the cases' vocabulary (``tied``: embedding = lm_head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cases.VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2 * cases.LENGTH,
        tie_word_embeddings=tied,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).double()


def llama_distiller() -> Distiller:
    """A tied 8-wide student and an untied 12-wide teacher, fused forward KL + CE."""
    torch.manual_seed(0)
    student, teacher = tiny_llama(8, tied=True), tiny_llama(12, tied=False)
    kd = Term("kd", "fused_linear_kd", temperature=2.0, loss_kwargs={"hard_label_weight": 0.5})
    return Distiller(student, teacher, [kd])


def run_llama(
    run_dir: Path, *, distributed: str, **train: Any
) -> tuple[Distiller, dict[str, torch.Tensor]]:
    """4 SGD steps (2 epochs of the 8 uneven sequences, global batch 4) of
    :func:`llama_distiller`; the Distiller and its final student weights."""
    distiller = llama_distiller()
    data = cases.UnevenTokens()
    config = TrainConfig(
        epochs=2,
        device="cpu",
        progress=False,
        distributed=distributed,
        log_every_steps=1,
        optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0},
        **train,
    )
    loader = batch_loader(data, 4, shuffle=True, generator=torch.Generator())
    # validation in batches of 3, 3 and 2: 2 processes evaluate 2 and 1 (+ 1 repeated)
    fit(distiller, loader, batch_loader(data, 3, shuffle=False), config, run_dir)
    return distiller, cases.trained_state(distiller)


def fsdp_units(distiller: Distiller) -> dict[str, bool]:
    """Whether each decoder layer, the student and the teacher are FSDP units."""
    from torch.distributed.fsdp import FSDPModule

    models = {"student": distiller.student, "teacher": distiller.teachers[0]}
    units = {name: isinstance(model, FSDPModule) for name, model in models.items()}
    for name, model in models.items():
        for index, layer in enumerate(model.model.layers):
            units[f"{name}.layer{index}"] = isinstance(layer, FSDPModule)
    return units


def fsdp_cases(out_dir: Path, rank: int) -> None:
    """The spawned FSDP cases (``distributed_cases.all_cases``): each rank saves
    ``llama-fsdp.rank<R>.pt`` (its final student and which modules are FSDP units) and
    ``llama-fsdp-accum.rank<R>.pt`` (2 micro-batches a step, teacher not sharded); the
    "logit" case on FSDP for 2 epochs is left in ``logit-fsdp/`` to be resumed on 1 process."""
    distiller, state = run_llama(out_dir / "llama-fsdp", distributed="fsdp", shard_teacher=True)
    result = {"state": state, "units": fsdp_units(distiller)}
    torch.save(result, out_dir / f"llama-fsdp.rank{rank}.pt")
    _, state = run_llama(out_dir / "llama-fsdp-accum", distributed="fsdp", grad_accum_steps=2)
    torch.save(state, out_dir / f"llama-fsdp-accum.rank{rank}.pt")
    cases.run("logit", out_dir / "logit-fsdp", distributed="fsdp")


def torchrun(nproc: int, *runs: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node NPROC`` this module's :func:`main` on ``runs``."""
    return cases.torchrun("-m", "train.fsdp_cases", *runs, nproc=nproc)


@record
def main(runs: list[str]) -> None:
    """Under torchrun: for each ``start:RUN_DIR:EPOCHS`` or ``resume:RUN_DIR:EPOCHS``, train
    the "logit" case on FSDP (resuming RUN_DIR) to EPOCHS epochs; rank 0 saves the final
    student as ``RUN_DIR/final.pt``."""
    for spec in runs:
        action, run_dir, epochs = spec.split(":")
        state = cases.run(
            "logit",
            Path(run_dir),
            distributed="fsdp",
            epochs=int(epochs),
            resume=action == "resume",
        )
        if dist.get_rank() == 0:
            torch.save(state, Path(run_dir) / "final.pt")
    end_process(0)


if __name__ == "__main__":
    main(sys.argv[1:])
