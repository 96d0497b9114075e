"""Contrast indices per sample for CRD's memory bank (RepDistiller's CIFAR100InstanceSample).

:class:`ContrastiveSampleDataset` wraps a dict-sample dataset (``{"inputs", "labels", "index"}``)
and adds ``contrast_index``: ``[K + 1]`` dataset indices, the positive first, then ``K`` negatives
of other classes. The default collate stacks them to the ``[B, K + 1]`` tensor that
``torchkd.losses.CRDLoss`` takes as ``contrast_index``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from torchkd.losses.crd_sampling import SamplingMode, draw_contrast_index, group_by_class

__all__ = ["ContrastiveSampleDataset"]

_SEED_MIX = 0x9E3779B97F4A7C15  # odd constant mixing the user seed with a worker's seed


class ContrastiveSampleDataset(Dataset[dict[str, Tensor]]):
    """Adds ``contrast_index`` (positive, then ``K`` other-class negatives) to every sample.

    The positive is the sample itself (``mode="exact"``) or a random sample of its class
    (``"relax"``); negatives are drawn uniformly with replacement from the other classes (see
    :func:`torchkd.losses.crd_sampling.draw_contrast_index`).

    Randomness: with ``seed=None`` draws come from torch's global generator (the DataLoader seeds
    it per worker and epoch, so runs are reproducible under ``torch.manual_seed``). With an
    integer ``seed`` each process owns a generator seeded from ``seed`` and, inside a DataLoader
    worker, that worker's seed (so workers never repeat one another's draws).

    Args:
        base: dataset of dict samples whose ``"index"`` is the sample's position.
        labels: ``[len(base)]`` class of every sample (at least two classes).
        num_negatives: ``K`` (must match the loss's ``num_negatives``).
        mode: ``"exact"`` or ``"relax"``.
        seed: see above.

    Example:
        >>> from torchkd.data.base import TensorDictDataset
        >>> labels = torch.tensor([0, 0, 1, 1, 2])
        >>> base = TensorDictDataset(torch.zeros(5, 3), labels)
        >>> sample = ContrastiveSampleDataset(base, labels, num_negatives=6, seed=0)[4]
        >>> drawn = sample["contrast_index"]
        >>> drawn[0].item(), sorted(set(labels[drawn[1:]].tolist()))  # itself, then other classes
        (4, [0, 1])
    """

    def __init__(
        self,
        base: Dataset[dict[str, Tensor]],
        labels: Tensor,
        num_negatives: int,
        mode: SamplingMode = "exact",
        seed: int | None = None,
    ) -> None:
        num_samples = len(base)  # type: ignore[arg-type]
        if not isinstance(labels, Tensor) or labels.shape != (num_samples,):
            raise ValueError(
                f"labels must be a tensor of shape [{num_samples}] (len(base)), got "
                f"{getattr(labels, 'shape', type(labels).__name__)}"
            )
        if (
            isinstance(num_negatives, bool)
            or not isinstance(num_negatives, int)
            or num_negatives < 1
        ):
            raise ValueError(f"num_negatives must be an integer >= 1, got {num_negatives!r}")
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
        self.base = base
        self.labels = labels.long().cpu()
        self.samples_by_class, self.class_offsets = group_by_class(self.labels)
        self.num_negatives = num_negatives
        self.mode: SamplingMode = mode
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._generator_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _current_generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        worker = get_worker_info()
        key = (self.seed, 0 if worker is None else worker.seed)
        if self._generator is None or self._generator_key != key:
            mixed = (self.seed * _SEED_MIX + key[1]) % 2**63
            self._generator = torch.Generator().manual_seed(mixed)
            self._generator_key = key
        return self._generator

    def __getitem__(self, position: int) -> dict[str, Tensor]:
        sample = dict(self.base[position])
        if "labels" in sample and int(sample["labels"]) != int(self.labels[position]):
            raise ValueError(
                f"sample {position} has label {int(sample['labels'])} but labels[{position}] is "
                f"{int(self.labels[position])}: labels must follow the base dataset's order"
            )
        sample["contrast_index"] = draw_contrast_index(
            torch.tensor([position]),
            self.num_negatives,
            labels=self.labels,
            samples_by_class=self.samples_by_class,
            class_offsets=self.class_offsets,
            mode=self.mode,
            generator=self._current_generator(),
        )[0]
        return sample
