"""The student's layout of a top-k cache whose teacher has its own tokenizer
(``data.kwargs.teacher_tokenizer``, :mod:`torchkd.lm.aligned`).

The teacher runs on its own tokens (``teacher_inputs``, ``[B, L_T]``), but the cache is read
with the student's samples: row ``b``, position ``t`` of the cache holds the teacher's top-k at
the teacher position compared with student position ``t``, ``teacher_positions[b, t]``. Where
that is ``-1`` (no teacher position is compared) the row holds padding: ids ``0 .. k-1``,
log-probabilities at float16's minimum and a tail of log-mass 0 (all the mass outside the ids,
a valid but empty distribution); readers leave those rows out by the same
``teacher_positions``, which the dataset the cache is read with carries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchkd.lm.cache.format import VALUE_DTYPE

__all__ = ["student_layout"]


def student_layout(stored: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
    """A top-k cache's ``token_ids``, ``log_probs`` ``[B, L_T, k]`` and ``tail`` ``[B, L_T]``
    at the teacher's positions, gathered to the student's ``[B, L, ...]`` by ``positions``
    (``[B, L]`` teacher positions, ``-1``: padding, see the module docstring)."""
    positions = positions.to(torch.int64).cpu()
    valid = positions >= 0
    batch = torch.arange(positions.shape[0]).unsqueeze(-1)
    gathered = {name: tensor[batch, positions.clamp_min(0)] for name, tensor in stored.items()}
    ids, log_probs, tail = gathered["token_ids"], gathered["log_probs"], gathered["tail"]
    padding = torch.arange(ids.shape[-1]).expand_as(ids)  # int64: uint16 has no arange
    return {
        "token_ids": torch.where(valid.unsqueeze(-1), ids.long(), padding).to(ids.dtype),
        "log_probs": log_probs.masked_fill(~valid.unsqueeze(-1), torch.finfo(VALUE_DTYPE).min),
        "tail": tail.masked_fill(~valid, 0.0),
    }
