"""Offline datasets (MNIST-1D, sklearn digits, MNIST-1D transfer sets, local text files)
yielding dict samples, and inputs synthesized from a teacher (DeepInversion, data-free)."""

from __future__ import annotations

from torchkd.data.base import SPLITS, TensorDictDataset, cache_dir, holdout_split
from torchkd.data.digits import load_digits
from torchkd.data.mnist1d import generate_mnist1d, load_mnist1d, mnist1d_transfer_set
from torchkd.data.registry import DATASETS, available_datasets, create_dataset
from torchkd.data.synthetic import deep_inversion
from torchkd.data.text import TextDataset, load_text
from torchkd.data.tokenizer import load_tokenizer, tokenizer_fingerprint, train_bpe_tokenizer
from torchkd.data.views import RowsView, WithoutLabels

__all__ = [
    "DATASETS",
    "SPLITS",
    "RowsView",
    "TensorDictDataset",
    "TextDataset",
    "WithoutLabels",
    "available_datasets",
    "cache_dir",
    "create_dataset",
    "deep_inversion",
    "generate_mnist1d",
    "holdout_split",
    "load_digits",
    "load_mnist1d",
    "load_text",
    "load_tokenizer",
    "mnist1d_transfer_set",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]
