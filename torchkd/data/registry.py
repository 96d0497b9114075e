"""Dataset registry: ``create_dataset(name, split, **kw)`` and ``available_datasets()``.

Datasets register at their definition (``@DATASETS.register("digits")``); importing
:mod:`torchkd.data` registers them all.
"""

from __future__ import annotations

from collections.abc import Callable

from torchkd._registry import Registry
from torchkd.data.base import TensorDictDataset

DATASETS: Registry[Callable[..., TensorDictDataset]] = Registry("dataset")


def available_datasets() -> list[str]:
    """Sorted names accepted by :func:`create_dataset`.

    Example:
        >>> {"digits", "mnist1d", "mnist1d_transfer", "text"} <= set(available_datasets())
        True
    """
    return DATASETS.available()


def create_dataset(name: str, split: str = "train", **kwargs: object) -> TensorDictDataset:
    """Build the dataset registered under ``name`` for ``split``.

    Keyword arguments go to the loader (``val_fraction``, ``split_seed``, ``cache`` for
    ``"mnist1d"``; ``val_fraction``, ``test_fraction``, ``split_seed`` for ``"digits"``;
    ``num_samples``, ``seed``, ``cache`` for ``"mnist1d_transfer"``; ``files``, ``tokenizer``,
    ``seq_len``, ``format``, ... for ``"text"``, see :func:`torchkd.data.text.load_text`).

    Example:
        >>> len(create_dataset("digits", "val"))
        144
    """
    return DATASETS.entry(name)(split=split, **kwargs)
