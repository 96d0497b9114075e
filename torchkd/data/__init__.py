"""Offline datasets (MNIST-1D, sklearn digits, MNIST-1D transfer sets) yielding dict samples."""

from __future__ import annotations

from torchkd.data.base import SPLITS, TensorDictDataset, cache_dir, holdout_split
from torchkd.data.digits import load_digits
from torchkd.data.loaders import Loaders, make_loaders
from torchkd.data.mnist1d import generate_mnist1d, load_mnist1d, mnist1d_transfer_set
from torchkd.data.registry import DATASETS, available_datasets, create_dataset

__all__ = [
    "DATASETS",
    "SPLITS",
    "Loaders",
    "TensorDictDataset",
    "available_datasets",
    "cache_dir",
    "create_dataset",
    "generate_mnist1d",
    "holdout_split",
    "load_digits",
    "load_mnist1d",
    "make_loaders",
    "mnist1d_transfer_set",
]
