"""The one checkpoint format: atomic writes, safe loads, exact resumption, student export.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` accepts (tensors,
numbers, strings, lists, dicts)::

    {
      "format": "torchkd.checkpoint", "version": 1,
      "student": student.state_dict(),          # what export_student writes
      "extras": distiller.extras.state_dict(),  # adapters, loss state (CRD banks), auto weights
      "optimizer": ..., "lr_schedule": ..., "scaler": ... | None,
      "rng": {"python", "numpy", "torch", "cuda"},     # see torchkd.train.rng
      "progress": {"epoch", "batches_done", "step", "num_batches", "best_metric",
                   "best_epoch", "nonfinite_steps", "epoch_totals", "history"},
      "config": {...},                          # the resolved recipe (or train section)
    }

``epoch`` counts finished epochs, ``batches_done`` the batches of the current epoch already
trained (non-zero only for a checkpoint written on Ctrl-C), ``step`` the optimizer steps.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save

CHECKPOINT_FORMAT = "torchkd.checkpoint"
CHECKPOINT_VERSION = 1
_REQUIRED_KEYS = ("student", "extras", "optimizer", "rng", "progress", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a torchkd checkpoint."""


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` so that readers see the old file or the complete new one, never a mix.

    ``write`` fills a temporary file in the same directory; it is flushed and fsynced, renamed
    over ``path`` with ``os.replace`` and the directory is fsynced. On any error (Ctrl-C
    included) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` ``checkpoint``, stamped with format and version, to ``path``."""
    stamped = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    return atomic_write(path, lambda stream: torch.save(stamped, stream))


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        text = str(error)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise CheckpointError(
                f"{path} holds a Python object ({refused.group(1)}) that safe loading "
                "(torch.load with weights_only=True) refuses; checkpoints may hold only tensors, "
                "numbers, strings and plain containers"
            ) from error
        first_line = text.splitlines()[0] if text else ""
        detail = first_line if len(first_line) <= 80 else first_line[:77] + "..."
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(error).__name__}: {detail})"
        ) from error


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, or not a torchkd checkpoint.
    """
    path = Path(path)
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a torchkd checkpoint (no format marker)")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {checkpoint.get('version')!r}; this torchkd reads "
            f"version {CHECKPOINT_VERSION}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return checkpoint


def load_student_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The student state dict stored in ``path``.

    ``path`` is a ``.safetensors`` file, a torchkd checkpoint (its ``"student"`` entry) or a
    ``torch.save``-d state dict; everything is read without unpickling code.

    Raises:
        CheckpointError: the file is missing, unreadable or holds no state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such weights file")
        try:
            return load_file(path)
        except Exception as error:
            raise CheckpointError(f"{path} is truncated or corrupt ({error})") from error
    loaded = _read(path)
    if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
        return loaded["student"]
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    raise CheckpointError(f"{path} holds neither a torchkd checkpoint nor a state dict")


def export_student(checkpoint_path: str | Path, out_path: str | Path) -> Path:
    """Write the bare student weights of a checkpoint to a ``.safetensors`` file (no extras).

    Tensors are copied so that tied weights (shared storage) can be written; the file is
    written atomically. Load it with ``safetensors.torch.load_file`` + ``load_state_dict``.
    """
    student_state = load_checkpoint(checkpoint_path)["student"]
    tensors = {name: value.detach().clone().contiguous() for name, value in student_state.items()}
    metadata = {"format": "pt", "source": str(checkpoint_path)}
    payload = save(tensors, metadata=metadata)
    return atomic_write(out_path, lambda stream: stream.write(payload))
