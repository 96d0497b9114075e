"""Whole-batch loading, seeded training augmentation, and evaluating every N epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from torchkd.config import build_loaders, recipe_from_dict
from torchkd.data import TensorDictDataset
from torchkd.data.batching import Augment, batch_loader, random_circular_shift
from torchkd.train.rng import seed_epoch_order


def make_dataset(num_samples: int = 23, labeled: bool = True) -> TensorDictDataset:
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(num_samples, 1, 12, generator=generator)
    labels = torch.randint(0, 4, (num_samples,), generator=generator) if labeled else None
    return TensorDictDataset(inputs, labels)


def assert_same_batches(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for first, second in zip(left, right, strict=True):
        assert first.keys() == second.keys()
        for key in first:
            assert first[key].dtype == second[key].dtype, key
            torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.parametrize("labeled", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_batch_loader_gives_the_batches_of_a_per_sample_loader(
    labeled: bool, shuffle: bool
) -> None:
    dataset = make_dataset(labeled=labeled)
    per_sample = DataLoader(
        dataset, batch_size=5, shuffle=shuffle, generator=torch.Generator().manual_seed(0)
    )
    fast = batch_loader(dataset, 5, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    assert len(fast) == len(per_sample) == 5
    for epoch in range(3):  # reseeded per epoch as the trainer does
        seed_epoch_order(per_sample, 7, epoch)
        seed_epoch_order(fast, 7, epoch)
        assert_same_batches(list(fast), list(per_sample))


def test_dataset_answers_a_list_of_indices_with_the_collated_batch() -> None:
    dataset = make_dataset()
    indices = [4, 0, 17, 4]
    batch = dataset[indices]
    collated = torch.utils.data.default_collate([dataset[i] for i in indices])
    assert_same_batches([batch], [collated])
    with pytest.raises(ValueError, match="1-D"):
        dataset[torch.zeros(2, 2, dtype=torch.long)]


def test_random_circular_shift_matches_rolling_each_row() -> None:
    inputs = torch.randn(6, 2, 9)
    shifted = random_circular_shift(inputs, 3, torch.Generator().manual_seed(1))
    offsets = torch.randint(-3, 4, (6,), generator=torch.Generator().manual_seed(1))
    for row in range(6):
        expected = torch.roll(inputs[row], int(offsets[row]), dims=-1)
        torch.testing.assert_close(shifted[row], expected, rtol=0, atol=0)
    assert not torch.equal(shifted, inputs)
    with pytest.raises(ValueError, match=r"\[B, C, L\]"):
        random_circular_shift(torch.zeros(3, 9), 1)
    with pytest.raises(ValueError, match="max_shift"):
        random_circular_shift(inputs, -1)


def test_augmentation_is_seeded_by_the_loader_generator_and_keeps_labels() -> None:
    dataset = make_dataset()

    def epoch_batches(seed: int) -> list[dict]:
        loader = batch_loader(
            dataset, 5, shuffle=True, generator=torch.Generator(), augment=Augment(shift=3)
        )
        seed_epoch_order(loader, seed, 0)
        return list(loader)

    first, again, other = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert_same_batches(first, again)  # reproducible, whatever torch's global state
    assert any(not torch.equal(a["inputs"], b["inputs"]) for a, b in zip(first, other, strict=True))
    plain = batch_loader(dataset, 5, shuffle=True, generator=torch.Generator())
    seed_epoch_order(plain, 0, 0)
    for augmented, unshifted in zip(first, plain, strict=True):
        assert torch.equal(augmented["index"], unshifted["index"])  # same order as unaugmented
        assert torch.equal(augmented["labels"], unshifted["labels"])
        rows = [
            any(torch.equal(torch.roll(x, k, -1), y) for k in range(-3, 4))
            for x, y in zip(unshifted["inputs"], augmented["inputs"], strict=True)
        ]
        assert all(rows)
    assert any(not torch.equal(a["inputs"], b["inputs"]) for a, b in zip(first, plain, strict=True))
    with pytest.raises(ValueError, match="generator"):
        batch_loader(dataset, 5, shuffle=True, augment=Augment(shift=1))
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=-2)


def test_recipe_augments_only_the_training_split(tmp_path: Path) -> None:
    recipe = recipe_from_dict(
        {
            "name": "augmented",
            "data": {"dataset": "digits", "batch_size": 64, "augment": {"shift": 2}},
            "student": {"model": "digits_cnn"},
            "terms": [{"name": "ce", "loss": "ce"}],
        }
    )
    augmented = build_loaders(recipe.data, seed=0)
    plain = build_loaders(recipe.data.model_copy(update={"augment": None}), seed=0)
    assert_same_batches(list(augmented.val), list(plain.val))
    assert_same_batches(list(augmented.test), list(plain.test))
    train, plain_train = next(iter(augmented.train)), next(iter(plain.train))
    assert torch.equal(train["index"], plain_train["index"])
    assert not torch.equal(train["inputs"], plain_train["inputs"])
    assert train["inputs"].shape == plain_train["inputs"].shape == (64, 1, 8, 8)


def test_worker_processes_load_the_same_augmented_batches() -> None:
    dataset = make_dataset()
    loaders = [
        batch_loader(
            dataset,
            4,
            shuffle=True,
            generator=torch.Generator(),
            num_workers=workers,
            augment=Augment(shift=2),
        )
        for workers in (0, 2)
    ]
    for loader in loaders:
        seed_epoch_order(loader, 3, 1)
    assert_same_batches(list(loaders[1]), list(loaders[0]))
