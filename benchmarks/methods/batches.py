"""The training batches of ``benchmarks/methods_mnist1d.py``: labeled, or labeled and
unlabeled transfer-set rows in every batch, each batch built whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .rows import (
    BATCH_SIZE,
    BATCHES_PER_EPOCH,
    TRANSFER_LABELED_PER_BATCH,
    TRANSFER_SAMPLES,
    TRANSFER_SEED,
    UNLABELED,
)


class RowBatches(Dataset[dict[str, torch.Tensor]]):
    """Labeled rows followed by unlabeled rows; ``dataset[positions]`` is a whole batch.

    ``index`` is the row's position in this union (CRD memory banks are keyed by it);
    unlabeled rows get the label ``-100``.
    """

    def __init__(self, labeled: Any, unlabeled: Any | None) -> None:
        inputs, labels = [labeled.inputs], [labeled.labels]
        if unlabeled is not None:
            inputs.append(unlabeled.inputs)
            labels.append(torch.full((len(unlabeled),), UNLABELED, dtype=torch.long))
        self.inputs = torch.cat(inputs)
        self.labels = torch.cat(labels)
        self.num_labeled = len(labeled)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, positions: list[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(positions)
        return {"inputs": self.inputs[rows], "labels": self.labels[rows], "index": rows}


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of ``labeled_per_batch`` labeled and ``batch_size - labeled_per_batch``
    unlabeled rows, each part walked through in fresh random permutations.

    An epoch is ``batches_per_epoch`` batches. The permutations come from ``generator``,
    which the trainer reseeds every epoch.
    """

    def __init__(
        self,
        rows: RowBatches,
        batch_size: int,
        labeled_per_batch: int,
        batches_per_epoch: int,
        generator: torch.Generator,
    ) -> None:
        self.parts = [(0, rows.num_labeled, labeled_per_batch)]
        if labeled_per_batch < batch_size:
            self.parts.append((rows.num_labeled, len(rows), batch_size - labeled_per_batch))
        self.batches_per_epoch = batches_per_epoch
        self.generator = generator

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _stream(self, start: int, stop: int, take: int) -> Iterator[list[int]]:
        pending: list[int] = []
        while True:
            while len(pending) < take:
                order = torch.randperm(stop - start, generator=self.generator) + start
                pending += order.tolist()
            yield pending[:take]
            pending = pending[take:]

    def __iter__(self) -> Iterator[list[int]]:
        streams = [self._stream(*part) for part in self.parts]
        for _ in range(self.batches_per_epoch):
            yield [position for stream in streams for position in next(stream)]


def train_loader(setting: str, labeled: Any, seed: int) -> DataLoader:
    """The training batches of ``setting`` (see the module docstring)."""
    from torchkd.data import mnist1d_transfer_set

    unlabeled = None
    labeled_per_batch = BATCH_SIZE
    if setting == "transfer":
        unlabeled = mnist1d_transfer_set(TRANSFER_SAMPLES, seed=TRANSFER_SEED)
        labeled_per_batch = TRANSFER_LABELED_PER_BATCH
    rows = RowBatches(labeled, unlabeled)
    generator = torch.Generator().manual_seed(seed)
    sampler = MixedBatchSampler(rows, BATCH_SIZE, labeled_per_batch, BATCHES_PER_EPOCH, generator)
    return DataLoader(rows, batch_size=None, sampler=sampler, generator=generator)


def num_train_rows(setting: str, num_labeled: int) -> int:
    return num_labeled + (TRANSFER_SAMPLES if setting == "transfer" else 0)
