"""A student's weights from any checkpoint torchkd writes or reads: a ``.pt`` training
checkpoint, an exported ``.safetensors`` file, a ``torch.save``-d state dict, or an FSDP run's
sharded ``name.dcp/`` directory (read on this process alone, no process group needed:
:func:`~torchkd.train.sharded.load_sharded_student`).

A sharded checkpoint is also found under its ``.pt`` name (``checkpoints/best.pt`` when only
``checkpoints/best.dcp/`` exists), the name a recipe's ``checkpoint:`` or ``--checkpoint``
gives whatever the run's strategy was.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from torchkd.train.checkpoint import load_checkpoint, load_student_file, save_student_safetensors
from torchkd.train.checkpoint_layout import sharded_path
from torchkd.train.sharded import load_sharded_student

__all__ = ["export_student", "load_student_weights", "sharded_directory"]


def sharded_directory(path: Path) -> Path | None:
    """The sharded (FSDP) checkpoint ``path`` names: the directory ``path`` (``name.dcp/``), or
    ``name.dcp/`` for a ``name.pt`` that does not exist; ``None`` for a file."""
    if path.is_dir():
        return path
    if not path.exists() and sharded_path(path).is_dir():
        return sharded_path(path)
    return None


def load_student_weights(path: str | Path) -> dict[str, Tensor]:
    """The student state dict stored in ``path`` (see the module docstring); digests are
    checked: a torchkd checkpoint's, every file's of a sharded one, and that in the metadata of
    a safetensors file written by :func:`export_student`.

    Raises:
        CheckpointError: the file or directory is missing, unreadable, damaged or holds no
            state dict.
    """
    path = Path(path)
    sharded = sharded_directory(path)
    return load_student_file(path) if sharded is None else load_sharded_student(sharded)


def export_student(checkpoint_path: str | Path, out_path: str | Path) -> Path:
    """Write the bare student weights of a training checkpoint (a ``.pt`` file or a sharded
    ``.dcp`` directory) to a ``.safetensors`` file, no extras
    (:func:`~torchkd.train.checkpoint.save_student_safetensors`)."""
    sharded = sharded_directory(Path(checkpoint_path))
    if sharded is None:
        state = load_checkpoint(checkpoint_path)["student"]
    else:
        state = load_sharded_student(sharded)
    return save_student_safetensors(state, out_path, str(checkpoint_path))
