"""The one checkpoint format: atomic writes, safe loads, exact resumption, student export.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` accepts (tensors,
numbers, strings, lists, dicts)::

    {
      "format": "torchkd.checkpoint", "version": 2,
      "student": student.state_dict(),          # what weights.export_student writes
      "extras": distiller.extras.state_dict(),  # adapters, loss state (CRD banks), auto weights
      "optimizer": ..., "lr_schedule": ..., "scaler": ... | None,
      "rng": {"python", "numpy", "torch", "cuda"},     # see torchkd.train.rng
      "progress": {"epoch", "batches_done", "step", "num_batches", "best_metric",
                   "best_epoch", "nonfinite_steps", "epoch_totals", "history"},
      "config": {...},                          # the resolved recipe (or train section)
      "sha256": "...",                          # digest of all the above (added on save)
    }

``epoch`` counts finished epochs, ``batches_done`` the batches of the current epoch already
trained (non-zero only for a checkpoint written on Ctrl-C), ``step`` the optimizer steps.

Damage is detected, never trained on. :func:`save_checkpoint` adds ``"sha256"``, the
:func:`~torchkd.train.digest.content_sha256` of everything else in the dict, in the same file
and so in the same atomic rename; :func:`load_checkpoint` recomputes it and refuses a mismatch
with a :class:`CheckpointError` that names the file (the run's other checkpoints are untouched:
nothing is written on a failed load). Version 1 checkpoints (older torchkd) carry no digest:
they are loaded with a warning that their bytes cannot be checked; saving them again (resume
the run, or ``save_checkpoint(load_checkpoint(path), path)``) adds one. A version 2 checkpoint
without its digest is refused as damaged.

Exported ``.safetensors`` files carry the digest of their tensors in their metadata under
``"torchkd.sha256"``; :func:`load_student_file` checks it. Safetensors files written
elsewhere have none and are read as they are.

Writes are atomic (:func:`torchkd._files.atomic_write`: a locked temporary beside the target,
renamed over it; temporaries of killed writes are removed by the next write into the directory,
:func:`~torchkd._files.remove_stale_temporaries`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from torchkd._files import atomic_write
from torchkd.errors import InputError
from torchkd.train.digest import content_sha256

CHECKPOINT_FORMAT = "torchkd.checkpoint"
CHECKPOINT_VERSION = 2  # 2: with a "sha256" digest; 1: without (read with a warning)
SAFETENSORS_DIGEST_KEY = "torchkd.sha256"
_DIGEST_KEY = "sha256"
_REQUIRED_KEYS = ("student", "extras", "optimizer", "rng", "progress", "config")


class CheckpointError(InputError, RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not a torchkd checkpoint."""


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Atomically ``torch.save`` ``checkpoint`` to ``path``, stamped with format and version
    and sealed with the SHA-256 digest of its contents (see the module docstring)."""
    reserved = ("format", "version", _DIGEST_KEY)
    stamped = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        **{key: value for key, value in checkpoint.items() if key not in reserved},
    }
    sealed = {**stamped, _DIGEST_KEY: content_sha256(stamped)}
    return atomic_write(path, lambda stream: torch.save(sealed, stream))


def damaged(path: Path, detail: str, remedy: str) -> CheckpointError:
    """The refusal of ``path``, whose bytes no longer match their digest (``detail`` says how)."""
    return CheckpointError(
        f"{path} is damaged: {detail}. It was not used and no file was changed; {remedy}"
    )


_CHECKPOINT_REMEDY = (
    "restore it from a copy, or use another checkpoint of the run (best.pt, epoch_*.pt; to "
    "resume from one, copy it over last.pt)"
)


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


def _verify(path: Path, checkpoint: dict[str, Any]) -> None:
    """Check and remove the digest of a loaded checkpoint (see the module docstring)."""
    version = checkpoint.get("version")
    if version not in (1, CHECKPOINT_VERSION):
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this torchkd reads versions 1 and "
            f"{CHECKPOINT_VERSION}"
        )
    stored = checkpoint.pop(_DIGEST_KEY, None)
    if version == 1:
        warnings.warn(
            f"{path} was written by an older torchkd (checkpoint version 1, no SHA-256 digest), "
            "so damage to its bytes cannot be detected; it is loaded unchecked. Saving it again "
            "(resume the run, or save_checkpoint(load_checkpoint(path), path)) adds a digest",
            UserWarning,
            stacklevel=4,
        )
        return
    if not isinstance(stored, str):
        raise damaged(path, "its SHA-256 digest is missing", _CHECKPOINT_REMEDY)
    actual = content_sha256(checkpoint)
    if actual != stored:
        raise damaged(
            path,
            f"its contents do not match the SHA-256 digest written with it (stored "
            f"{stored[:12]}..., now {actual[:12]}...)",
            _CHECKPOINT_REMEDY,
        )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    The returned dict is the one saved: its SHA-256 digest is checked and removed.

    Raises:
        CheckpointError: the file is missing, truncated, damaged (digest mismatch), corrupt, or
            not a torchkd checkpoint.
    """
    path = Path(path)
    return _checked(path, _read(path))


def _checked(path: Path, checkpoint: Any) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a torchkd checkpoint (no format marker)")
    _verify(path, checkpoint)
    missing = [key for key in _REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return checkpoint


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    return content_sha256(dict(sorted(tensors.items())))


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against the digest in its metadata when it has one."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with safe_open(path, framework="pt") as archive:
            metadata = archive.metadata() or {}
            tensors = {name: archive.get_tensor(name) for name in archive.keys()}  # noqa: SIM118
    except Exception as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({error})") from error
    stored = metadata.get(SAFETENSORS_DIGEST_KEY)
    if stored is not None and _tensors_sha256(tensors) != stored:
        raise damaged(
            path,
            "its tensors do not match the SHA-256 digest in its metadata",
            "export it again from its checkpoint (torchkd export)",
        )
    return tensors


def load_student_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The student state dict stored in the file ``path`` (a sharded FSDP checkpoint too:
    :func:`torchkd.train.weights.load_student_weights`).

    ``path`` is a ``.safetensors`` file, a torchkd checkpoint (its ``"student"`` entry) or a
    ``torch.save``-d state dict; everything is read without unpickling code. Digests are
    checked: a torchkd checkpoint's (:func:`load_checkpoint`) and that in the metadata of a
    safetensors file written by :func:`save_student_safetensors`.

    Raises:
        CheckpointError: the file is missing, unreadable, damaged or holds no state dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    loaded = _read(path)
    if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
        return _checked(path, loaded)["student"]
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded
    raise CheckpointError(f"{path} holds neither a torchkd checkpoint nor a state dict")


def save_student_safetensors(
    student_state: Mapping[str, Tensor], out_path: str | Path, source: str
) -> Path:
    """Write the bare student weights ``student_state`` (read from the checkpoint ``source``)
    to a ``.safetensors`` file.

    Tensors are copied so that tied weights (shared storage) can be written; the file is
    written atomically, with the SHA-256 digest of its tensors in its metadata
    (``"torchkd.sha256"``). :func:`load_student_file` checks the digest;
    ``safetensors.torch.load_file`` reads the file too, unchecked.
    """
    tensors = {name: value.detach().clone().contiguous() for name, value in student_state.items()}
    metadata = {"format": "pt", "source": source, SAFETENSORS_DIGEST_KEY: _tensors_sha256(tensors)}
    payload = save(tensors, metadata=metadata)
    return atomic_write(out_path, lambda stream: stream.write(payload))


def pretrained_part(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model``: ``model`` itself (``hf_causal_lm``,
    ``hf_encoder``) or a sentence encoder's ``encoder`` (without its pooling).

    Raises:
        ValueError: ``model`` holds no module with ``save_pretrained``.
    """
    for candidate in (model, getattr(model, "encoder", None)):
        if callable(getattr(candidate, "save_pretrained", None)):
            assert isinstance(candidate, nn.Module)
            return candidate
    raise ValueError(
        f"{type(model).__name__} is not a Hugging Face model (it has no save_pretrained); "
        "export it in the safetensors format instead"
    )


def export_pretrained(model: nn.Module, out_dir: str | Path) -> Path:
    """Write the Hugging Face model inside ``model`` (:func:`pretrained_part`) with
    ``save_pretrained`` to ``out_dir``: its ``config.json`` and safetensors weights, so
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` (or ``AutoModel``) loads it.

    Raises:
        ValueError: ``model`` is not a Hugging Face model, or ``out_dir`` is a file.
    """
    from torchkd.models.hf import quiet_progress_bars

    pretrained = pretrained_part(model)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; the hf format writes a directory")
    with quiet_progress_bars():
        pretrained.save_pretrained(out_dir)
    return out_dir


def check_fits(path: Path, name: str, module: nn.Module, saved: Mapping[str, Tensor]) -> None:
    """Refuse a checkpoint whose ``name`` weights do not fit ``module``, saying how."""
    own = module.state_dict()
    missing = [key for key in own if key not in saved]
    unexpected = [key for key in saved if key not in own]
    resized = [
        f"{key} {tuple(saved[key].shape)} -> {tuple(own[key].shape)}"
        for key in own
        if key in saved and tuple(saved[key].shape) != tuple(own[key].shape)
    ]
    problems = [
        f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
        for label, keys in (
            ("missing in the checkpoint", missing),
            ("not in the model", unexpected),
            ("shape changed", resized),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path}: the {name} weights do not fit the model being resumed (was the model "
            f"changed since the run started?); {'; '.join(problems)}"
        )
