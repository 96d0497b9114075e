"""The cross-modal demo's teacher, computed once: all-MiniLM-L6-v2's docstring embeddings.

The teacher is frozen and reads fixed inputs (the docstring summaries), so its outputs are the
same on every batch and every run: :func:`teacher_embeddings` embeds every docstring once
(batched, no gradients) and caches the ``[N, 384]`` rows as safetensors under
:func:`torchkd.data.base.cache_dir` ``/crossmodal``, keyed by the SHA-256 of the teacher's
weights file, of the tokenized docstrings and :data:`CODE_VERSION`. The dataset's
``teacher_inputs`` view holds those rows and the recipe's teacher, :class:`CachedTeacher`,
returns them unchanged, so training runs the student only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CODE_VERSION", "CachedTeacher", "cached_teacher", "teacher_embeddings"]

CODE_VERSION = "1"  # bump when the embedding code changes (invalidates the cache)
BATCH = 256


class CachedTeacher(nn.Module):
    """The teacher whose outputs were computed once: ``embedding`` [B, D] -> itself."""

    def forward(self, embedding: Tensor) -> Tensor:
        return embedding


def cached_teacher() -> CachedTeacher:
    """:class:`CachedTeacher`, for recipes."""
    return CachedTeacher()


def _digest(teacher_dir: Path, ids: Tensor, mask: Tensor) -> str:
    weights = sorted(teacher_dir.glob("*.safetensors")) or sorted(teacher_dir.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"no weights (*.safetensors, *.bin) in teacher_dir {teacher_dir}")
    digest = hashlib.sha256(CODE_VERSION.encode())
    for path in weights:
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    for tensor in (ids, mask):
        digest.update(str(list(tensor.shape)).encode())
        digest.update(tensor.long().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def teacher_embeddings(
    ids: Tensor, mask: Tensor, teacher_dir: str | Path | None = None, cache: str | None = None
) -> Tensor:
    """all-MiniLM-L6-v2's (or ``teacher_dir``'s encoder's) float32 embeddings of the tokenized
    docstrings ``ids``/``mask`` [N, L], from the cache or computed once and cached."""
    from safetensors.torch import load_file, save_file

    from torchkd.data.base import cache_dir
    from torchkd.demo.embeddings.models import minilm_teacher, model_dir

    directory = Path(teacher_dir) if teacher_dir is not None else model_dir()
    path = cache_dir(cache) / "crossmodal" / f"teacher-{_digest(directory, ids, mask)}.safetensors"
    if path.is_file():
        return load_file(path)["embedding"]
    teacher = minilm_teacher(str(directory)).eval()
    with torch.no_grad():
        rows = [
            teacher(
                input_ids=ids[start : start + BATCH], attention_mask=mask[start : start + BATCH]
            )
            for start in range(0, len(ids), BATCH)
        ]
    embedding = torch.cat(rows).float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"embedding": embedding}, str(partial))
    os.replace(partial, path)
    return embedding
