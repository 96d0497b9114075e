"""Dataset registry: ``create_dataset(name, split, **kw)``, ``available_datasets()``, loaders."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.data import DataLoader

from torchkd.data.base import TensorDictDataset
from torchkd.data.batching import Augment, batch_loader
from torchkd.data.digits import load_digits
from torchkd.data.mnist1d import load_mnist1d, mnist1d_transfer_set


def _transfer_factory(
    split: str = "train", num_samples: int = 25_000, seed: int = 1, **kwargs: object
) -> TensorDictDataset:
    if split != "train":
        raise ValueError(
            f"mnist1d_transfer is an unlabeled training set; split must be 'train', got {split!r}"
        )
    return mnist1d_transfer_set(num_samples, seed=seed, **kwargs)  # type: ignore[arg-type]


_DATASETS: dict[str, Callable[..., TensorDictDataset]] = {
    "mnist1d": load_mnist1d,
    "digits": load_digits,
    "mnist1d_transfer": _transfer_factory,
}


def available_datasets() -> list[str]:
    """Sorted names accepted by :func:`create_dataset`.

    Example:
        >>> available_datasets()
        ['digits', 'mnist1d', 'mnist1d_transfer']
    """
    return sorted(_DATASETS)


def create_dataset(name: str, split: str = "train", **kwargs: object) -> TensorDictDataset:
    """Build the dataset registered under ``name`` for ``split``.

    Keyword arguments go to the loader (``val_fraction``, ``split_seed``, ``cache`` for
    ``"mnist1d"``; ``val_fraction``, ``test_fraction``, ``split_seed`` for ``"digits"``;
    ``num_samples``, ``seed``, ``cache`` for ``"mnist1d_transfer"``).

    Example:
        >>> len(create_dataset("digits", "val"))
        144
    """
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, list(_DATASETS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(
            f"unknown dataset {name!r}{hint} (available: {', '.join(available_datasets())})"
        )
    return _DATASETS[name](split=split, **kwargs)


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
