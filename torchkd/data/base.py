"""Pieces shared by the offline datasets: dict-batch datasets, seeded splits, the cache dir.

Every dataset yields one dict per sample, so PyTorch's default collate gives dicts of batched
tensors:

- labeled: ``{"inputs": Tensor, "labels": LongTensor [], "index": LongTensor []}``;
- unlabeled (transfer sets): ``{"inputs": Tensor, "index": LongTensor []}``.

``index`` is the sample's position in its dataset (``0 .. len - 1``): contrastive losses with a
memory bank (CRD) key their per-sample entries by it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchkd._files import atomic_write

SPLITS: tuple[str, ...] = ("train", "val", "test")


class TensorDictDataset(Dataset[dict[str, Tensor]]):
    """In-memory dataset of ``inputs`` (and optional ``labels``) returning dict samples.

    Args:
        inputs: ``[N, ...]`` floating-point tensor, one row per sample.
        labels: ``[N]`` integer class labels, or ``None`` for an unlabeled (transfer) set.

    Example:
        >>> ds = TensorDictDataset(torch.zeros(3, 1, 4), torch.tensor([0, 2, 1]))
        >>> sorted(ds[1].items(), key=lambda kv: kv[0])
        [('index', tensor(1)), ('inputs', tensor([[0., 0., 0., 0.]])), ('labels', tensor(2))]
    """

    def __init__(self, inputs: Tensor, labels: Tensor | None = None) -> None:
        if not inputs.is_floating_point():
            raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
        if labels is not None:
            if labels.dim() != 1 or labels.shape[0] != inputs.shape[0]:
                raise ValueError(
                    f"labels must have shape [{inputs.shape[0]}] to match inputs "
                    f"{tuple(inputs.shape)}, got {tuple(labels.shape)}"
                )
            labels = labels.long()
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, position: int | Sequence[int]) -> dict[str, Tensor]:
        """One sample for an integer; for a sequence of indices, the batch of those samples
        (what the default collate would make of them, in one indexing operation)."""
        if isinstance(position, int | np.integer | Tensor) and not (
            isinstance(position, Tensor) and position.dim() > 0
        ):
            position = int(position)
            sample = {"inputs": self.inputs[position], "index": torch.tensor(position)}
        else:
            index = torch.as_tensor(position, dtype=torch.long)
            if index.dim() != 1:
                raise ValueError(f"batch indices must be 1-D, got shape {tuple(index.shape)}")
            sample = {"inputs": self.inputs[index], "index": index}
            position = index
        if self.labels is not None:
            sample["labels"] = self.labels[position]
        return sample

    @property
    def num_classes(self) -> int | None:
        """Number of classes (``max label + 1``), ``None`` for an unlabeled set."""
        return None if self.labels is None else int(self.labels.max()) + 1


def check_split(split: str) -> None:
    """Raise ``ValueError`` unless ``split`` is one of :data:`SPLITS`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def holdout_split(num_samples: int, holdout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded disjoint ``(kept, held_out)`` index tensors covering ``range(num_samples)``.

    ``round(holdout_fraction * num_samples)`` indices go to the held-out part. Both parts are
    sorted, so a split keeps the original sample order.

    Example:
        >>> kept, held = holdout_split(10, 0.2, seed=0)
        >>> len(kept), len(held), sorted(kept.tolist() + held.tolist()) == list(range(10))
        (8, 2, True)
    """
    check_fraction("holdout_fraction", holdout_fraction)
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_samples, generator=generator)
    num_held = round(holdout_fraction * num_samples)
    return permutation[num_held:].sort().values, permutation[:num_held].sort().values


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``override``, else ``$TORCHKD_CACHE``, else ``~/.cache/torchkd``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("TORCHKD_CACHE", Path.home() / ".cache" / "torchkd"))


def cache_key(settings: dict[str, object]) -> str:
    """A short stable hash of JSON-serializable ``settings`` (the generation arguments)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` via a temp file and ``os.replace`` (atomic)."""
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (object arrays refused: no pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
