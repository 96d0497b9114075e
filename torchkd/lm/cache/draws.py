"""A sampled teacher cache's draws (``kind="sampled"``, :mod:`torchkd.losses.sampled`): each
row's uniforms from its own seeded generator, and a batch's distinct drawn ids, counts,
entropies (and exact head) from the teacher's last hidden state, a chunk at a time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkd.lm.cache.format import row_seed
from torchkd.lm.model import last_hidden_state, output_projection
from torchkd.losses import SampledLogits

__all__ = ["row_uniforms", "sampled_batch"]


def sampled_batch(
    teacher: nn.Module,
    inputs: Any,
    positions: Sequence[int],
    samples: int,
    k: int | None,
    seed: int,
    temperature: float,
    chunk_size: int,
) -> dict[str, Tensor]:
    """``[B, L, N]`` distinct drawn ids and counts and ``[B, L]`` entropies of
    ``softmax(teacher logits / T)`` for the rows ``positions``
    (:meth:`SampledLogits.from_logits <torchkd.losses.SampledLogits.from_logits>` of each row's
    seeded uniforms, :func:`row_uniforms`, with an exact head of ``k`` tokens when given:
    ``[B, L, k]`` ids and log-probabilities, ``[B, L]`` tails), a chunk of ``chunk_size``
    positions at a time."""
    projection = output_projection(teacher, "teacher")
    hidden = last_hidden_state(teacher, inputs, "teacher")
    flat = hidden.reshape(-1, hidden.shape[-1])
    uniforms = row_uniforms(positions, hidden.shape[1], samples, seed)
    flat_uniforms = uniforms.reshape(-1, samples).to(hidden.device)
    parts = [
        SampledLogits.from_logits(
            projection.logits(flat[start : start + chunk_size]),
            samples,
            temperature,
            uniforms=flat_uniforms[start : start + chunk_size],
            k=k or 0,
        )
        for start in range(0, flat.shape[0], chunk_size)
    ]
    rows = hidden.shape[:-1]
    fields = {
        "token_ids": [part.token_ids for part in parts],
        "counts": [part.counts for part in parts],
        "entropy": [part.entropy for part in parts],
    }
    if k:
        fields["head_ids"] = [part.head.token_ids for part in parts]
        fields["head_log_probs"] = [part.head.log_probs for part in parts]
        fields["head_tail"] = [part.head.tail_log_mass for part in parts]
    return {
        name: torch.cat(values).reshape(*rows, *values[0].shape[1:])
        for name, values in fields.items()
    }


def row_uniforms(rows: Sequence[int], length: int, samples: int, seed: int) -> Tensor:
    """``[len(rows), L, N]`` float64 uniforms, each row's from its own CPU generator seeded
    with :func:`~torchkd.lm.cache.format.row_seed` (the same draws on every device, whatever
    the batch and chunk sizes)."""
    uniforms = []
    for row in rows:
        generator = torch.Generator().manual_seed(row_seed(seed, row))
        uniforms.append(torch.rand((length, samples), generator=generator, dtype=torch.float64))
    return torch.stack(uniforms)
