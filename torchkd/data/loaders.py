"""Train / validation / test loaders of one registered dataset."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader

from torchkd.data.batching import Augment, batch_loader
from torchkd.data.registry import create_dataset


@dataclass(frozen=True)
class Loaders:
    """Train (shuffled, seeded), validation and test loaders of one dataset."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


def make_loaders(
    name: str,
    batch_size: int,
    seed: int = 0,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    augment: Augment | None = None,
    **kwargs: object,
) -> Loaders:
    """Train/validation/test :class:`~torch.utils.data.DataLoader` s of a labeled dataset.

    Args:
        name: a labeled dataset name (``"mnist1d"`` or ``"digits"``).
        batch_size: training batch size.
        seed: seeds the training shuffle order (the splits are seeded by ``split_seed``).
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: worker processes per loader.
        augment: training-time augmentation (training loader only; seeded per batch from the
            training loader's generator).
        **kwargs: forwarded to :func:`create_dataset`.

    Example:
        >>> loaders = make_loaders("digits", batch_size=32, seed=0)
        >>> batch = next(iter(loaders.train))
        >>> tuple(batch["inputs"].shape), batch["labels"].dtype
        ((32, 1, 8, 8), torch.int64)
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    build = partial(create_dataset, name, **kwargs)
    splits = {split: build(split) for split in ("train", "val", "test")}
    generator = torch.Generator().manual_seed(seed)
    loader = partial(batch_loader, num_workers=num_workers)
    eval_size = eval_batch_size or batch_size
    return Loaders(
        train=loader(
            splits["train"], batch_size, shuffle=True, generator=generator, augment=augment
        ),
        val=loader(splits["val"], eval_size, shuffle=False),
        test=loader(splits["test"], eval_size, shuffle=False),
    )
