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
    """Build the dataset registered under ``name`` for ``split``, or your own
    ``"package.module:function"`` (imported, see :func:`torchkd._registry.import_reference`).

    A dataset function of your own is called as ``function(split=..., val_fraction=...,
    split_seed=..., **data.kwargs)`` by recipes (``split`` is ``"train"``, ``"val"`` or
    ``"test"``; hold out ``val_fraction`` of the training rows for ``"val"``, partitioned by
    ``split_seed``), or ``function(split="train", num_samples=..., seed=..., **kwargs)`` as a
    transfer set; it returns a map-style dataset of dict samples (``inputs``, ``labels``;
    e.g. :class:`~torchkd.data.base.TensorDictDataset`).

    Keyword arguments go to the loader (``val_fraction``, ``split_seed``, ``cache`` for
    ``"mnist1d"``; ``val_fraction``, ``test_fraction``, ``split_seed`` for ``"digits"``;
    ``num_samples``, ``seed``, ``cache`` for ``"mnist1d_transfer"``; ``files``, ``tokenizer``,
    ``seq_len``, ``format``, ... for ``"text"``, see :func:`torchkd.data.text.load_text`).

    Example:
        >>> len(create_dataset("digits", "val"))
        144
    """
    return DATASETS.resolve(name)(split=split, **kwargs)
