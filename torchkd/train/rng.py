"""Seeding and random-state snapshots for reproducible, exactly resumable training.

Every random source a training step can touch (Python's ``random``, NumPy's global generator,
torch's CPU generator and every CUDA generator) is seeded together and captured together. The
snapshots hold only lists, numbers, strings and tensors, so a checkpoint that contains them
loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) with ``seed``.

    Example:
        >>> seed_everything(3); first = torch.rand(1)
        >>> seed_everything(3); bool(torch.equal(first, torch.rand(1)))
        True
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every global random generator as checkpoint-safe primitives and tensors.

    Example:
        >>> state = capture_rng_state(); drawn = torch.rand(2)
        >>> restore_rng_state(state); bool(torch.equal(drawn, torch.rand(2)))
        True
    """
    python_version, python_internal, python_gauss = random.getstate()
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": [numpy_kind, numpy_keys.tolist(), numpy_pos, numpy_has_gauss, numpy_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`capture_rng_state`.

    CUDA states are restored only when the same number of devices is visible; otherwise CUDA
    generators keep their current state (a resumed run on other hardware cannot be bit-exact).
    """
    python_version, python_internal, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_internal), python_gauss))
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = state["numpy"]
    np.random.set_state(
        (
            numpy_kind,
            np.asarray(numpy_keys, dtype=np.uint32),
            numpy_pos,
            numpy_has_gauss,
            numpy_gauss,
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda", [])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for epoch ``epoch`` of a run seeded with ``seed``.

    Each epoch's shuffle order depends on ``(seed, epoch)`` only, so a resumed run reproduces
    it without saving any iterator state.

    Example:
        >>> epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)
        True
    """
    words = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_epoch_order(loader: DataLoader, seed: int, epoch: int) -> None:
    """Reseed ``loader``'s shuffling (and worker seeding) generator for epoch ``epoch``.

    A ``DataLoader(..., shuffle=True, generator=g)`` draws its permutation and its workers' base
    seed from ``g``; reseeding ``g`` makes the epoch's order a function of ``(seed, epoch)``.
    A ``RandomSampler`` with its own generator is reseeded as well, and a sampler with
    ``set_epoch`` (``DistributedSampler``) is told the epoch. A loader without any generator
    draws from torch's global generator, which the trainer restores from checkpoints.
    """
    value = epoch_seed(seed, epoch)
    generators = [loader.generator, getattr(loader.sampler, "generator", None)]
    for generator in {id(g): g for g in generators if g is not None}.values():
        generator.manual_seed(value)
    if not isinstance(loader.sampler, RandomSampler) and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
