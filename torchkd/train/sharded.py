"""Sharded checkpoints of FSDP runs with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a directory ``checkpoints/<name>.dcp/`` (its names:
:mod:`torchkd.train.checkpoint_layout`)::

    .metadata, __0_0.distcp, ...   # DCP: {"model": student + extras, "optimizer": ...},
                                   # each process writes its own shards
    trainer.rank<R>.pt             # per process: a torchkd checkpoint (atomic, checksummed)
                                   # with lr_schedule, progress, config and that process's
                                   # generator states ("student", "extras" and "optimizer"
                                   # hold the marker "sharded"); rank 0's also holds
                                   # "files_sha256": {file name: SHA-256 of its bytes} of
                                   # .metadata and every .distcp file

Writes are atomic as a whole: every process writes into ``.<name>.dcp.tmp/``; once all are
done, rank 0 renames the previous directory aside, renames the new one into place and removes
the old one. DCP reshards on load, so a run saved on N processes resumes on M (1 included:
``torchrun --nproc-per-node 1`` with ``train.distributed: fsdp``): the model and optimizer load
resharded; each process takes its own ``trainer.rank<R>.pt`` when there is one, else rank 0's
(generator states then differ from a run that had M processes throughout).
:func:`load_sharded_student` reads the student's full weights on one process, with no process
group (``torchkd eval``, ``torchkd export``, a recipe's ``checkpoint:``).

Damage is detected, never trained on (DCP itself checks nothing: a flipped bit in a tensor
loads as it is). Before anything is loaded, every process checks the bytes of every DCP file
against ``files_sha256`` and reads its trainer file (whose own digest is checked); a refusal
on any process -- naming the file -- is raised on every process together
(:func:`~torchkd.train.refusal.refuse_together`), and a DCP error while loading becomes a
:class:`~torchkd.train.checkpoint.CheckpointError` naming the directory.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.optim import Optimizer

from torchkd.errors import InputError
from torchkd.train.checkpoint import CheckpointError, damaged, load_checkpoint, save_checkpoint
from torchkd.train.checkpoint_layout import trainer_file
from torchkd.train.digest import file_sha256
from torchkd.train.refusal import refuse_together

__all__ = ["load_sharded", "load_sharded_student", "save_sharded"]

SHARDED = "sharded"
_SHARDED_KEYS = ("student", "extras", "optimizer")
_FILES_DIGEST_KEY = "files_sha256"
_REMEDY = (
    "restore the directory from a copy, or use another checkpoint of the run (best.dcp, "
    "epoch_*.dcp; to resume from one, copy it over last.dcp)"
)


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
    if rank == 0:  # dcp.save returns on rank 0 once every process's files are written
        trainer[_FILES_DIGEST_KEY] = {
            file.name: file_sha256(file) for file in sorted(temporary.iterdir()) if _is_dcp(file)
        }
    save_checkpoint(trainer, trainer_file(temporary, rank))
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


def _is_dcp(file: Path) -> bool:
    return file.name == ".metadata" or file.suffix == ".distcp"


def _check_files(directory: Path, digests: Any) -> None:
    """Refuse ``directory`` when a DCP file is missing or its bytes differ from its digest."""
    trainer = trainer_file(directory, 0)
    if not isinstance(digests, dict) or ".metadata" not in digests:
        raise damaged(trainer, "it lacks the SHA-256 digests of the DCP files", _REMEDY)
    for name, stored in digests.items():
        file = directory / name
        if not file.is_file():
            raise damaged(file, "the file is missing", _REMEDY)
        actual = file_sha256(file)
        if actual != stored:
            raise damaged(
                file,
                f"its bytes do not match the SHA-256 digest stored in {trainer.name} (stored "
                f"{stored[:12]}..., now {actual[:12]}...)",
                _REMEDY,
            )


def _checked_trainer(directory: Path, rank: int) -> dict[str, Any]:
    """This process's trainer checkpoint, once every DCP file of ``directory`` is checked."""
    if not (directory / ".metadata").is_file():
        raise CheckpointError(f"{directory} is not a sharded torchkd checkpoint (no .metadata)")
    first = load_checkpoint(trainer_file(directory, 0))
    _check_files(directory, first.pop(_FILES_DIGEST_KEY, None))
    own = trainer_file(directory, rank)
    return load_checkpoint(own) if rank and own.is_file() else first


def _first_failure(error: CheckpointException) -> str:
    rank, (failure, _) = min(error.failures.items())
    return f"rank {rank}: {type(failure).__name__}: {str(failure).splitlines()[0]}"


def load_sharded(
    directory: Path, model: nn.Module, optimizer: Optimizer, rank: int
) -> dict[str, Any]:
    """Load ``directory`` into ``model`` and ``optimizer`` (resharded to this run) and return
    this process's trainer checkpoint dict (see the module docstring); a collective.

    Raises:
        InputError: on every process, when any process found a file of ``directory`` missing,
            damaged or unreadable (the message names it).
    """
    refusal: InputError | None = None
    try:
        trainer = _checked_trainer(directory, rank)
    except InputError as error:
        refusal = error
    refuse_together(refusal)
    model_state, optimizer_state = get_state_dict(model, [optimizer])
    state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=directory)  # raises on every process together
    except CheckpointException as error:
        raise CheckpointError(
            f"{directory} could not be loaded into this run's model and optimizer "
            f"({_first_failure(error)}); was the model changed since the run started?"
        ) from None
    set_state_dict(
        model, [optimizer], model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    return trainer


_STUDENT_PREFIX = "model.student."  # the student's keys in the DCP files


def load_sharded_student(directory: Path) -> dict[str, Tensor]:
    """The student's full state dict (on the CPU) in the sharded checkpoint ``directory``,
    read by this process alone (no process group needed, none used if there is one); the
    files are checked as for resuming.

    Raises:
        CheckpointError: ``directory`` is not a sharded torchkd checkpoint, a file is missing
            or damaged, or it holds no student weights.
    """
    _checked_trainer(directory, 0)
    metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    state = {
        key: torch.empty(item.size, dtype=item.properties.dtype)
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith(_STUDENT_PREFIX) and isinstance(item, TensorStorageMetadata)
    }
    if not state:
        raise CheckpointError(f"{directory} holds no student weights (no {_STUDENT_PREFIX}* keys)")
    try:
        with warnings.catch_warnings():  # that it reads on this process alone, as asked
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, checkpoint_id=directory, no_dist=True)
    except CheckpointException as error:
        raise CheckpointError(
            f"{directory}: the student weights could not be read ({_first_failure(error)})"
        ) from None
    return {key.removeprefix(_STUDENT_PREFIX): value for key, value in state.items()}
