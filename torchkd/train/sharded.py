"""Sharded checkpoints of FSDP runs with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a directory ``checkpoints/<name>.dcp/``::

    .metadata, __0_0.distcp, ...   # DCP: {"model": student + extras, "optimizer": ...},
                                   # each process writes its own shards
    trainer.rank<R>.pt             # per process: a torchkd checkpoint (atomic, checksummed)
                                   # with lr_schedule, progress, config and that process's
                                   # generator states ("student", "extras" and "optimizer"
                                   # hold the marker "sharded")

Writes are atomic as a whole: every process writes into ``.<name>.dcp.tmp/``; once all are
done, rank 0 renames the previous directory aside, renames the new one into place and removes
the old one. DCP reshards on load, so a run saved on N processes resumes on M: the model and
optimizer load resharded; each process takes its own ``trainer.rank<R>.pt`` when there is one,
else rank 0's (generator states then differ from a run that had M processes throughout).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

from torchkd.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["load_sharded", "save_sharded"]

SHARDED = "sharded"
_SHARDED_KEYS = ("student", "extras", "optimizer")


def _trainer_file(directory: Path, rank: int) -> Path:
    return directory / f"trainer.rank{rank}.pt"


def save_sharded(
    checkpoint: dict[str, Any], directory: Path, model: nn.Module, optimizer: Optimizer
) -> Path:
    """Write the sharded checkpoint ``directory`` (a collective: every process calls it).

    Args:
        checkpoint: the trainer's checkpoint dict (its model and optimizer entries are
            replaced by DCP shards).
        directory: ``<name>.dcp``.
        model: the FSDP-wrapped student and extras.
        optimizer: their optimizer.
    """
    rank = dist.get_rank()
    temporary = directory.with_name(f".{directory.name}.tmp")
    if rank == 0:
        shutil.rmtree(temporary, ignore_errors=True)  # left by a killed write
        temporary.mkdir(parents=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, [optimizer])
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=temporary)
    trainer = {**checkpoint, **dict.fromkeys(_SHARDED_KEYS, SHARDED)}
    save_checkpoint(trainer, _trainer_file(temporary, rank))
    dist.barrier()
    if rank == 0:
        previous = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(previous, ignore_errors=True)
        if directory.exists():
            directory.rename(previous)
        temporary.rename(directory)
        shutil.rmtree(previous, ignore_errors=True)
    dist.barrier()
    return directory


def load_sharded(
    directory: Path, model: nn.Module, optimizer: Optimizer, rank: int
) -> dict[str, Any]:
    """Load ``directory`` into ``model`` and ``optimizer`` (resharded to this run) and return
    this process's trainer checkpoint dict (see the module docstring)."""
    if not (directory / ".metadata").is_file():
        raise CheckpointError(f"{directory} is not a sharded torchkd checkpoint (no .metadata)")
    model_state, optimizer_state = get_state_dict(model, [optimizer])
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=directory)
    set_state_dict(
        model, [optimizer], model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    own = _trainer_file(directory, rank)
    return load_checkpoint(own if own.is_file() else _trainer_file(directory, 0))
