"""MNIST-1D, generated offline, and unlabeled transfer sets from the same generative process.

MNIST-1D (Greydanus, "Scaling down deep learning", 2020) turns ten 1-D digit templates into
40-sample sequences by padding, scaling, translating, adding correlated and i.i.d. noise and
shearing. The ``mnist1d`` package generates it procedurally with
``mnist1d.data.make_dataset``; nothing here downloads anything.

Representation, decided once: inputs are float32 ``[1, 40]`` (channels, length). The 1-D CNN
consumes them as is; the MLP flattens them. ``make_dataset`` already centers each generated set
and scales it to unit standard deviation (one scalar mean and std over the whole set); torchkd
adds no further standardization, so train, validation, test and transfer sets all carry the
package's own scaling. A transfer set is standardized by its own statistics, which estimate the
same population values: it is generated with at least 5000 samples (the size of the published
set) and then trimmed, so a small transfer set is not scaled by a noisy estimate.

Splits: the published 4000 train / 1000 test samples (``num_samples=5000``, ``seed=42``,
``train_split=0.8``); ``val_fraction`` of the 4000 training samples are held out (seeded) as the
validation split. Report final numbers on ``test`` only.

Generated arrays are cached as ``.npz`` under :func:`torchkd.data.base.cache_dir`, keyed by the
generation arguments and written atomically, so repeated runs skip generation.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch

from torchkd._extras import require
from torchkd.data.base import (
    TensorDictDataset,
    cache_dir,
    cache_key,
    check_fraction,
    check_split,
    holdout_split,
    load_npz,
    save_npz_atomic,
)
from torchkd.data.registry import DATASETS

PUBLISHED_NUM_SAMPLES = 5000
PUBLISHED_SEED = 42
PUBLISHED_TRAIN_SPLIT = 0.8
NUM_CLASSES = 10
SEQUENCE_LENGTH = 40


def generate_mnist1d(
    num_samples: int = PUBLISHED_NUM_SAMPLES,
    seed: int = PUBLISHED_SEED,
    train_split: float = PUBLISHED_TRAIN_SPLIT,
    cache: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Generate (or load from the cache) MNIST-1D arrays with ``mnist1d.data.make_dataset``.

    Args:
        num_samples: samples to generate; ``make_dataset`` makes ``num_samples // 10`` per class,
            so it must be a positive multiple of 10.
        seed: the generator's seed (42 gives the published set).
        train_split: fraction of samples in ``x``/``y``; the rest go to ``x_test``/``y_test``.
        cache: cache directory override (default :func:`~torchkd.data.base.cache_dir`).

    Returns:
        ``{"x": float32 [n, 40], "y": int64 [n], "x_test": ..., "y_test": ...}``.

    The global ``random`` and ``numpy.random`` states, which ``make_dataset`` reseeds, are
    restored afterwards.
    """
    if num_samples <= 0 or num_samples % NUM_CLASSES:
        raise ValueError(f"num_samples must be a positive multiple of 10, got {num_samples}")
    if not 0.0 < train_split <= 1.0:
        raise ValueError(f"train_split must be in (0, 1], got {train_split}")
    settings = {"num_samples": num_samples, "seed": seed, "train_split": train_split}
    path = cache_dir(cache) / "mnist1d" / f"mnist1d-{cache_key(settings)}.npz"
    if path.exists():
        return load_npz(path)
    mnist1d = require("mnist1d.data", "demo", "the MNIST-1D dataset")  # slow (scipy): only here
    args = mnist1d.get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        generated = mnist1d.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    arrays = {
        "x": generated["x"].astype(np.float32),
        "y": generated["y"].astype(np.int64),
        "x_test": generated["x_test"].astype(np.float32).reshape(-1, SEQUENCE_LENGTH),
        "y_test": generated["y_test"].astype(np.int64),
    }
    save_npz_atomic(Path(path), arrays)
    return arrays


@DATASETS.register("mnist1d")
def load_mnist1d(
    split: str = "train",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
) -> TensorDictDataset:
    """The published MNIST-1D set as a labeled dict dataset with ``[1, 40]`` inputs.

    Args:
        split: ``"train"`` (training samples minus the validation hold-out), ``"val"`` or
            ``"test"`` (the published 1000 test samples).
        val_fraction: fraction of the 4000 training samples held out for validation.
        split_seed: seed of the train/validation partition.
        cache: cache directory override.

    Example:
        >>> train = load_mnist1d("train", val_fraction=0.1)
        >>> len(train), tuple(train[0]["inputs"].shape), train.num_classes
        (3600, (1, 40), 10)
    """
    check_split(split)
    check_fraction("val_fraction", val_fraction)
    arrays = generate_mnist1d(cache=cache)
    if split == "test":
        inputs, labels = torch.from_numpy(arrays["x_test"]), torch.from_numpy(arrays["y_test"])
    else:
        inputs, labels = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
        kept, held_out = holdout_split(len(labels), val_fraction, split_seed)
        rows = kept if split == "train" else held_out
        inputs, labels = inputs[rows], labels[rows]
    return TensorDictDataset(inputs.unsqueeze(1), labels)


def mnist1d_transfer_set(
    num_samples: int,
    seed: int = 1,
    cache: str | os.PathLike[str] | None = None,
) -> TensorDictDataset:
    """Fresh unlabeled MNIST-1D samples from the generative process, for label-free KD.

    Args:
        num_samples: number of samples returned.
        seed: generator seed; must differ from the published set's seed (42), which would
            regenerate the training samples.
        cache: cache directory override.

    Returns:
        An unlabeled :class:`~torchkd.data.base.TensorDictDataset` with ``[1, 40]`` inputs
        (samples yield ``{"inputs", "index"}``).

    Example:
        >>> transfer = mnist1d_transfer_set(100, seed=1)
        >>> len(transfer), sorted(transfer[0])
        (100, ['index', 'inputs'])
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if seed == PUBLISHED_SEED:
        raise ValueError(
            f"seed={seed} is the published MNIST-1D seed and would regenerate the training "
            "samples; pick another seed for a transfer set"
        )
    generated_count = NUM_CLASSES * math.ceil(max(num_samples, PUBLISHED_NUM_SAMPLES) / NUM_CLASSES)
    arrays = generate_mnist1d(generated_count, seed=seed, train_split=1.0, cache=cache)
    inputs = torch.from_numpy(arrays["x"][:num_samples])
    return TensorDictDataset(inputs.unsqueeze(1))


@DATASETS.register("mnist1d_transfer")
def _transfer_factory(
    split: str = "train", num_samples: int = 25_000, seed: int = 1, **kwargs: object
) -> TensorDictDataset:
    if split != "train":
        raise ValueError(
            f"mnist1d_transfer is an unlabeled training set; split must be 'train', got {split!r}"
        )
    return mnist1d_transfer_set(num_samples, seed=seed, **kwargs)  # type: ignore[arg-type]
