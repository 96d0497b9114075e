"""Offline datasets: shapes, dict samples, seeded disjoint splits, cache, transfer sets."""

from __future__ import annotations

import random
from pathlib import Path

import mnist1d.data as mnist1d_generator
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from torchkd.config import DataConfig, build_loaders
from torchkd.data import (
    available_datasets,
    create_dataset,
    generate_mnist1d,
    load_digits,
    load_mnist1d,
    mnist1d_transfer_set,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torchkd_cache")


def _row_set(inputs: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in inputs.flatten(1)}


def test_mnist1d_sizes_shapes_and_dict_samples(cache: Path) -> None:
    sizes = {
        split: len(load_mnist1d(split, val_fraction=0.1, cache=cache))
        for split in ("train", "val", "test")
    }
    assert sizes == {"train": 3600, "val": 400, "test": 1000}
    test = load_mnist1d("test", cache=cache)
    sample = test[7]
    assert set(sample) == {"inputs", "labels", "index"}
    assert sample["inputs"].shape == (1, 40) and sample["inputs"].dtype == torch.float32
    assert sample["labels"].dtype == torch.long and sample["labels"].dim() == 0
    assert int(sample["index"]) == 7
    assert sorted(test.labels.unique().tolist()) == list(range(10))


def test_mnist1d_train_val_disjoint_cover_training_set_and_exclude_test(cache: Path) -> None:
    train = load_mnist1d("train", val_fraction=0.25, split_seed=3, cache=cache)
    val = load_mnist1d("val", val_fraction=0.25, split_seed=3, cache=cache)
    test = load_mnist1d("test", cache=cache)
    train_rows, val_rows, test_rows = map(_row_set, (train.inputs, val.inputs, test.inputs))
    assert len(train_rows) == 3000 and len(val_rows) == 1000
    assert not train_rows & val_rows and not (train_rows | val_rows) & test_rows
    raw = generate_mnist1d(cache=cache)
    assert train_rows | val_rows == _row_set(torch.from_numpy(raw["x"]))


def test_mnist1d_split_is_seeded(cache: Path) -> None:
    first = load_mnist1d("val", split_seed=1, cache=cache).inputs
    again = load_mnist1d("val", split_seed=1, cache=cache).inputs
    other = load_mnist1d("val", split_seed=2, cache=cache).inputs
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_mnist1d_cache_round_trip_skips_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHKD_CACHE", str(tmp_path))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    generated = generate_mnist1d()
    assert random.getstate() == python_state  # make_dataset reseeds the global RNGs
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    files = list((tmp_path / "mnist1d").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind

    def refuse(*args: object) -> None:
        raise AssertionError("make_dataset must not run when the cache holds the arrays")

    monkeypatch.setattr(mnist1d_generator, "make_dataset", refuse)  # imported at call time
    cached = generate_mnist1d()
    assert set(cached) == {"x", "y", "x_test", "y_test"}
    for name, array in generated.items():
        assert np.array_equal(array, cached[name]), name
    assert cached["x"].shape == (4000, 40) and cached["x"].dtype == np.float32


def test_transfer_set_is_fresh_unlabeled_and_seeded(cache: Path) -> None:
    transfer = mnist1d_transfer_set(1000, seed=1, cache=cache)
    assert len(transfer) == 1000 and set(transfer[3]) == {"inputs", "index"}
    assert transfer[3]["inputs"].shape == (1, 40)
    train = load_mnist1d("train", val_fraction=0.0, cache=cache)
    distances = torch.cdist(transfer.inputs.flatten(1), train.inputs.flatten(1))
    assert distances.min() > 1e-3  # no training sample regenerated
    assert torch.equal(transfer.inputs, mnist1d_transfer_set(1000, seed=1, cache=cache).inputs)
    assert not torch.equal(transfer.inputs, mnist1d_transfer_set(1000, seed=2, cache=cache).inputs)
    # same scaling convention as the published set: centered, unit standard deviation
    assert abs(float(transfer.inputs.mean())) < 0.1
    assert abs(float(transfer.inputs.std()) - 1.0) < 0.1


def test_transfer_set_rejects_published_seed_and_bad_sizes(cache: Path) -> None:
    with pytest.raises(ValueError, match="seed=42"):
        mnist1d_transfer_set(10, seed=42, cache=cache)
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d_transfer_set(0, cache=cache)
    with pytest.raises(ValueError, match="multiple of 10"):
        generate_mnist1d(55, cache=cache)


def test_digits_splits_scaled_and_disjoint() -> None:
    splits = {split: load_digits(split, split_seed=0) for split in ("train", "val", "test")}
    assert sum(len(ds) for ds in splits.values()) == 1797
    assert len(splits["test"]) == round(0.2 * 1797)
    rows = {split: _row_set(ds.inputs) for split, ds in splits.items()}
    assert not rows["train"] & rows["val"] and not (rows["train"] | rows["val"]) & rows["test"]
    assert len(rows["train"] | rows["val"] | rows["test"]) == 1797  # the images are all distinct
    for ds in splits.values():
        assert ds.inputs.shape[1:] == (1, 8, 8)
        assert float(ds.inputs.min()) == 0.0 and float(ds.inputs.max()) == 1.0
    assert not torch.equal(load_digits("test", split_seed=1).inputs, splits["test"].inputs)


def test_registry_lists_and_suggests() -> None:
    # other packages (e.g. the embeddings demo, on import) may add theirs
    assert {"digits", "mnist1d", "mnist1d_transfer", "text"} <= set(available_datasets())
    assert available_datasets() == sorted(available_datasets())
    with pytest.raises(KeyError, match="did you mean 'mnist1d'"):
        create_dataset("mnist_1d")
    with pytest.raises(ValueError, match="split must be one of"):
        create_dataset("digits", "validation")
    with pytest.raises(ValueError, match="split must be 'train'"):
        create_dataset("mnist1d_transfer", "test", num_samples=10)
    with pytest.raises(ValueError, match="val_fraction"):
        create_dataset("digits", val_fraction=1.0)


def test_default_collate_gives_dict_batches_and_loaders_are_seeded() -> None:
    batch = next(iter(DataLoader(load_digits("val"), batch_size=5)))
    assert batch["inputs"].shape == (5, 1, 8, 8)
    assert batch["labels"].shape == (5,) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    data = DataConfig(dataset="digits", batch_size=16)
    first = next(iter(build_loaders(data, seed=4).train))["index"]
    again = next(iter(build_loaders(data, seed=4).train))["index"]
    other = next(iter(build_loaders(data, seed=5).train))["index"]
    assert torch.equal(first, again) and not torch.equal(first, other)
    loaders = build_loaders(data.model_copy(update={"eval_batch_size": 100}))
    assert len(next(iter(loaders.test))["labels"]) == 100
