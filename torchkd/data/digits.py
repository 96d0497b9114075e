"""scikit-learn's bundled handwritten digits (1797 samples, 8×8 images, 10 classes).

The data ship with scikit-learn (``sklearn.datasets.load_digits``, from the UCI optical
recognition of handwritten digits set), so nothing is downloaded. Pixels (0–16) are scaled to
``[0, 1]``; inputs are float32 ``[1, 8, 8]``. The test split is carved first, then the
validation split from the rest, both seeded by ``split_seed``.
"""

from __future__ import annotations

import torch

from torchkd._extras import require
from torchkd.data.base import TensorDictDataset, check_fraction, check_split, holdout_split
from torchkd.data.registry import DATASETS

NUM_CLASSES = 10
MAX_PIXEL_VALUE = 16.0


@DATASETS.register("digits")
def load_digits(
    split: str = "train",
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> TensorDictDataset:
    """The sklearn digits as a labeled dict dataset with ``[1, 8, 8]`` inputs in ``[0, 1]``.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction: fraction of the non-test samples held out for validation.
        test_fraction: fraction of all samples held out for testing.
        split_seed: seed of both partitions.

    Example:
        >>> test = load_digits("test")
        >>> len(test), tuple(test[0]["inputs"].shape)
        (359, (1, 8, 8))
    """
    check_split(split)
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    datasets = require("sklearn.datasets", "demo", "the digits dataset")  # slow import: only here
    bunch = datasets.load_digits()
    inputs = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / MAX_PIXEL_VALUE
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    development, test = holdout_split(len(labels), test_fraction, split_seed)
    if split == "test":
        rows = test
    else:
        kept, held_out = holdout_split(len(development), val_fraction, split_seed + 1)
        rows = development[kept if split == "train" else held_out]
    return TensorDictDataset(inputs[rows], labels[rows])
