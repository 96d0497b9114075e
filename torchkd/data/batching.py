"""Whole-batch loading: one indexing operation per batch instead of one call per sample.

A ``DataLoader`` over a per-sample dataset calls ``__getitem__`` once per sample and collates
the dicts (about 8 ms for a batch of 512 MNIST-1D samples); :func:`batch_loader` instead lets
its sampler yield a whole batch of indices (a :class:`BatchKey`) and the dataset answer with a
batched dict in one indexing operation (a fraction of a millisecond). The batches are the
same: :class:`BatchOrder` draws its shuffle from the loader's generator exactly as
``DataLoader(shuffle=True, generator=g)`` does, so ``seed_epoch_order`` reseeds it each epoch
and resuming stays exact.

Optional training-time augmentation (:class:`Augment`) is applied per batch with a
``torch.Generator`` seeded by a number the sampler draws from the loader's generator after the
epoch's permutation, so it is reproducible, independent of the global random state, the same
with or without worker processes, and replayed exactly when a resumed epoch skips its first
batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "Augment",
    "BatchKey",
    "BatchOrder",
    "BatchedView",
    "batch_loader",
    "random_circular_shift",
]


class BatchKey(NamedTuple):
    """The indices of one batch and, when the batch is augmented, its augmentation seed."""

    indices: list[int]
    seed: int | None = None


class _BatchIndexable(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> dict[str, Tensor]: ...


class BatchOrder(Sampler[BatchKey]):
    """Yields one :class:`BatchKey` per batch, in the order a ``DataLoader`` would batch.

    Args:
        num_samples: dataset length.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a fresh permutation from ``generator`` every epoch (``torch.randperm``,
            as ``RandomSampler`` does); otherwise ``0 .. num_samples - 1`` in order.
        generator: the loader's generator (reseeded each epoch by the trainer). A shuffling
            order without one draws a seed from torch's global generator, like
            ``RandomSampler``.
        drop_last: drop a last, incomplete batch.
        seeded: also draw one augmentation seed per batch from ``generator``.
        num_replicas: processes sharing each batch (``torch.distributed`` world size).
        rank: this process's share: with ``num_replicas > 1``, ``batch_size`` is the global
            batch, every process draws the same order and takes the ``rank``-th contiguous
            slice of ``batch_size / num_replicas`` samples of each batch (so ``N`` processes
            together see exactly the batches one process would). A last batch of ``m``
            samples gives each process ``m // num_replicas`` (the ``m % num_replicas`` last
            samples of the epoch are skipped; a batch too small to share is dropped).
            Augmentation seeds are mixed with ``rank``.
        seed: with ``num_replicas > 1`` and no ``generator``, the order of epoch ``e`` is
            drawn from a generator seeded with ``seed + e`` (:meth:`set_epoch`, as
            ``DistributedSampler`` does), identical on every process.

    Example:
        >>> order = BatchOrder(5, 2, shuffle=False)
        >>> [key.indices for key in order]
        [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        seeded: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be non-negative, got {num_samples}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, {num_replicas=}")
        if batch_size % num_replicas:
            raise ValueError(
                f"batch_size={batch_size} (the global batch) must be divisible by the "
                f"{num_replicas} processes that share it"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.seeded = seeded
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order a sharded sampler without a ``generator`` draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        if self.num_samples % self.batch_size < self.num_replicas:  # no shareable last batch
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def _generator(self) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        if self.num_replicas > 1:
            return torch.Generator().manual_seed(self.seed + self.epoch)
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        return torch.Generator().manual_seed(seed)

    def _share(self, indices: list[int]) -> list[int]:
        share = len(indices) // self.num_replicas
        return indices[self.rank * share : (self.rank + 1) * share]

    def __iter__(self) -> Iterator[BatchKey]:
        generator = self._generator() if self.shuffle or self.seeded else None
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        for batch in range(len(self)):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            seed = None
            if self.seeded:
                seed = int(torch.randint(0, 2**62, (), generator=generator))
                seed = seed if self.num_replicas == 1 else (seed + self.rank) % 2**62
            yield BatchKey(indices if self.num_replicas == 1 else self._share(indices), seed)


def random_circular_shift(
    inputs: Tensor, max_shift: int, generator: torch.Generator | None = None
) -> Tensor:
    """Rotate each row of ``inputs`` ``[B, C, L]`` along ``L`` by its own random offset.

    .. math::
        x'_{b,c,l} = x_{b,c,(l - s_b) \\bmod L}, \\qquad s_b \\sim \\mathcal{U}\\{-m, \\dots, m\\}

    with ``m = max_shift``, drawn from ``generator`` (torch's global generator when ``None``).

    Example:
        >>> row = torch.arange(5.0).reshape(1, 1, 5)
        >>> shifted = random_circular_shift(row, 2, torch.Generator().manual_seed(0))
        >>> sorted(shifted.flatten().tolist()) == row.flatten().tolist()
        True
    """
    if inputs.dim() != 3:
        raise ValueError(f"inputs must be [B, C, L], got {tuple(inputs.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    length = inputs.shape[-1]
    offsets = torch.randint(-max_shift, max_shift + 1, (inputs.shape[0],), generator=generator)
    offsets = offsets.to(inputs.device)
    positions = (torch.arange(length, device=inputs.device) - offsets[:, None]) % length
    return inputs.gather(-1, positions[:, None, :].expand(-1, inputs.shape[1], -1))


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of a batch's ``inputs`` (the recipe's ``data.augment``).

    Attributes:
        shift: random circular shift of up to this many positions along the last axis of
            ``[B, ..., L]`` inputs, one offset per sample (:func:`random_circular_shift`); 0
            turns it off.
    """

    shift: int = 0

    def __post_init__(self) -> None:
        if self.shift < 0:
            raise ValueError(f"augment shift must be >= 0, got {self.shift}")

    @property
    def active(self) -> bool:
        return self.shift > 0

    def __call__(self, batch: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(seed)
        inputs = batch["inputs"]
        if self.shift:
            if inputs.dim() < 2:
                raise ValueError(f"augment shift needs [B, ..., L] inputs, got {inputs.dim()}-D")
            rows = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
            inputs = random_circular_shift(rows, self.shift, generator).reshape(inputs.shape)
        return {**batch, "inputs": inputs}


class BatchedView(Dataset[dict[str, Tensor]]):
    """A dataset that answers a :class:`BatchKey` with a whole batch in one indexing call.

    ``dataset`` must accept a list of indices and return the batched dict (as
    :class:`~torchkd.data.TensorDictDataset` does); an integer index is passed through
    unchanged (per-sample access, no augmentation), and so are other attributes
    (``num_classes``, ``inputs``, ...).

    Args:
        dataset: the batch-indexable dataset.
        augment: applied to every batch whose key carries a seed.
    """

    def __init__(self, dataset: _BatchIndexable, augment: Augment | None = None) -> None:
        self.dataset = dataset
        self.augment = augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: BatchKey | int) -> dict[str, Tensor]:
        if not isinstance(key, BatchKey):
            return self.dataset[key]
        batch = self.dataset[key.indices]
        if key.seed is not None and self.augment is not None:
            batch = self.augment(batch, key.seed)
        return batch

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "augment"):  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def batch_loader(
    dataset: _BatchIndexable,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    augment: Augment | None = None,
) -> DataLoader:
    """A ``DataLoader`` of dict batches fetched with one indexing operation each.

    Same batches, in the same order, as ``DataLoader(dataset, batch_size, shuffle=shuffle,
    generator=generator)`` with the default collate; ``len(loader)`` is the number of
    batches and ``loader.generator`` the shuffling generator.

    Example:
        >>> from torchkd.data import TensorDictDataset
        >>> data = TensorDictDataset(torch.zeros(5, 1, 3), torch.tensor([0, 1, 0, 1, 0]))
        >>> loader = batch_loader(data, 2, shuffle=False)
        >>> len(loader), next(iter(loader))["index"].tolist()
        (3, [0, 1])
    """
    seeded = augment is not None and augment.active
    if seeded and generator is None:
        raise ValueError("augmentation needs the loader's generator (generator=...)")
    order = BatchOrder(
        len(dataset), batch_size, shuffle=shuffle, generator=generator, seeded=seeded
    )
    return DataLoader(
        BatchedView(dataset, augment if seeded else None),
        batch_size=None,
        sampler=order,
        generator=generator,
        num_workers=num_workers,
    )
