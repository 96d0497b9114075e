"""The training engine: :func:`fit`, checkpoints, evaluation metrics and run logging."""

from __future__ import annotations

from torchkd._files import remove_stale_temporaries
from torchkd.train.checkpoint import (
    CheckpointError,
    export_pretrained,
    load_checkpoint,
    save_checkpoint,
)
from torchkd.train.device import resolve_device
from torchkd.train.evaluate import agreement, evaluate, expected_calibration_error
from torchkd.train.fit import fit
from torchkd.train.loop import Trainer
from torchkd.train.results import FitResult, NonFiniteLossError
from torchkd.train.rng import seed_everything
from torchkd.train.weights import export_student, load_student_weights

__all__ = [
    "CheckpointError",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "agreement",
    "evaluate",
    "expected_calibration_error",
    "export_pretrained",
    "export_student",
    "fit",
    "load_checkpoint",
    "load_student_weights",
    "remove_stale_temporaries",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
]
