"""The datasets and loaders of a recipe's ``data:`` section: :func:`build_loaders`, the one
loader builder of every run, and :func:`build_datasets` (transfer set, synthetic set, teacher
cache)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchkd.config.errors import ConfigError, blame
from torchkd.config.schema import DataConfig
from torchkd.config.teacher_cache import CACHED_SPLITS

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from torchkd.distiller import Distiller
    from torchkd.lm.server import TeacherServerClient

__all__ = ["SPLIT_NAMES", "Loaders", "build_datasets", "build_loaders"]

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Loaders:
    """The loaders :func:`build_loaders` made; a split that was not asked for is ``None``."""

    train: DataLoader | None
    val: DataLoader | None
    test: DataLoader | None


def build_loaders(
    data: DataConfig,
    seed: int = 0,
    *,
    splits: Sequence[str] = SPLIT_NAMES,
    train_samples: int | None = None,
    teacher_server: TeacherServerClient | None = None,
    distiller: Distiller | None = None,
) -> Loaders:
    """The loaders of ``data``: the one loader builder of every run.

    ``torchkd train``, tuning trials and their retrain, teacher-selection probes and the demo
    all load through here, so they see the same batches for the same recipe and seed
    (augmentation and transfer set included).

    Args:
        data: the recipe's ``data:`` section. With ``data.transfer`` the transfer set is the
            training split, with ``data.synthetic`` the inputs synthesized from the teacher;
            ``data.augment`` applies to the training loader only; ``data.teacher_cache`` adds
            the cached teacher to the training and validation samples.
        seed: seeds the training shuffle (the trainer reseeds it every epoch from
            ``(seed, epoch)``) and the ``train_samples`` selection.
        splits: which loaders to build; a search asks for ``("train", "val")`` so the test
            split is never built.
        train_samples: keep only this many training samples, the first of a permutation
            seeded by ``seed`` (probes shorter than one epoch).
        teacher_server: the client of a recipe's teacher server (``teacher: {server: URL}``):
            it adds the served teacher to the training and validation batches, as
            ``data.teacher_cache`` adds a cached one.
        distiller: the run's distiller, whose teacher (and student) synthesize the training
            split of ``data.synthetic``.

    Example:
        >>> from torchkd.config import DataConfig
        >>> loaders = build_loaders(DataConfig(dataset="digits", batch_size=32), splits=["val"])
        >>> loaders.train is None, next(iter(loaders.val))["inputs"].shape[0]
        (True, 32)
    """
    import torch

    from torchkd.data import RowsView
    from torchkd.data.batching import Augment, batch_loader

    datasets = build_datasets(data, splits, distiller=distiller, teacher_server=teacher_server)
    if "train" in splits and train_samples is not None:
        order = torch.randperm(
            len(datasets["train"]), generator=torch.Generator().manual_seed(seed)
        )
        datasets["train"] = RowsView(datasets["train"], order[:train_samples].tolist())
    eval_size = data.eval_batch_size or data.batch_size
    loaders: dict[str, DataLoader | None] = dict.fromkeys(SPLIT_NAMES)
    for split, dataset in datasets.items():
        training = split == "train"
        loaders[split] = batch_loader(
            dataset,
            data.batch_size if training else eval_size,
            shuffle=training,
            generator=torch.Generator().manual_seed(seed) if training else None,
            num_workers=data.num_workers,
            augment=Augment(shift=data.augment.shift) if training and data.augment else None,
        )
    return Loaders(**loaders)


def build_datasets(
    data: DataConfig,
    splits: Sequence[str] = SPLIT_NAMES,
    *,
    distiller: Distiller | None = None,
    teacher_server: TeacherServerClient | None = None,
) -> dict[str, Any]:
    """The datasets of ``data`` by split name: the transfer set as the training split when
    ``data.transfer`` is set, the inputs ``distiller``'s teacher synthesizes when
    ``data.synthetic`` is (:mod:`~torchkd.config.build_synthetic`), and the training and
    validation splits read with the teacher cache when ``data.teacher_cache`` is
    (:class:`~torchkd.lm.cache.TeacherCacheDataset`; the validation split's terms are
    evaluated every epoch, the test split's are not), or with the answers of
    ``teacher_server`` (:class:`~torchkd.lm.server.TeacherServerDataset`)."""
    from torchkd.data import create_dataset

    unknown = [split for split in splits if split not in SPLIT_NAMES]
    if unknown or not splits:
        raise ValueError(f"splits: expected a non-empty subset of {SPLIT_NAMES}, got {splits}")
    split_kwargs = {"val_fraction": data.val_fraction, "split_seed": data.seed, **data.kwargs}
    _check_dataset(data.dataset, "data.dataset", ["split", *split_kwargs])
    if data.transfer is not None:
        transfer_keys = ["split", "num_samples", "seed", *data.transfer.kwargs]
        _check_dataset(data.transfer.dataset, "data.transfer.dataset", transfer_keys)
    replaced = data.transfer is not None or data.synthetic is not None
    datasets: dict[str, Any] = {}
    with blame("data"):
        for split in splits:
            if split != "train" or not replaced:
                datasets[split] = create_dataset(data.dataset, split, **split_kwargs)
    if "train" in splits and data.transfer is not None:
        datasets["train"] = _transfer_set(data)
    if "train" in splits and data.synthetic is not None:
        datasets["train"] = _synthetic_set(data, distiller)
    if data.teacher_cache is not None:
        from torchkd.lm.cache import TeacherCacheDataset, split_directory

        cache = data.teacher_cache
        for split in [name for name in CACHED_SPLITS if name in splits]:
            with blame(f"data.teacher_cache ({split} split)"):
                datasets[split] = TeacherCacheDataset(
                    datasets[split],
                    split_directory(cache.dir, split),
                    kind=cache.kind,
                    k=cache.k,
                    samples=cache.samples,
                    inputs_key=data.teacher_inputs or "inputs",
                )
    if teacher_server is not None:
        from torchkd.lm.server import TeacherServerDataset

        for split in [name for name in CACHED_SPLITS if name in splits]:
            datasets[split] = TeacherServerDataset(datasets[split], teacher_server)
    return datasets


def _check_dataset(name: str, path: str, passed: Sequence[str]) -> None:
    """Refuse an unknown dataset, or a dataset function (your own ``package.module:function``)
    that does not take every argument torchkd passes it (``passed``: see
    :func:`torchkd.data.create_dataset` for the contract)."""
    from torchkd.data import DATASETS

    with blame(path):
        function = DATASETS.resolve(name)
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [key for key in passed if key not in parameters]
    if missing:
        raise ConfigError(
            [
                f"{path}: {name}({', '.join(parameters)}) does not take "
                f"{', '.join(missing)}, which torchkd passes it (it is called with "
                f"{', '.join(passed)}; see torchkd.data.create_dataset and the README's "
                "'Your own model and dataset')"
            ]
        )


def _synthetic_set(data: DataConfig, distiller: Distiller | None) -> Any:
    from torchkd.config.build_synthetic import synthetic_training_set

    if distiller is None or not distiller.teachers:
        raise ConfigError(
            [
                "data.synthetic: the training set is synthesized from the run's teacher; "
                "build the loaders with the recipe's distiller (build_from_recipe does)"
            ]
        )
    return synthetic_training_set(data, distiller.teachers[0], distiller.student)


def _transfer_set(data: DataConfig) -> Any:
    """The transfer set of ``data.transfer`` (labels dropped unless ``labeled: true``)."""
    from torchkd.data import WithoutLabels, create_dataset

    transfer = data.transfer
    assert transfer is not None

    with blame("data.transfer"):
        transfer_set = create_dataset(
            transfer.dataset,
            "train",
            num_samples=transfer.num_samples,
            seed=transfer.seed,
            **transfer.kwargs,
        )
    has_labels = "labels" in transfer_set[0]
    if transfer.labeled and not has_labels:
        raise ConfigError(
            [
                f"data.transfer.labeled: dataset {transfer.dataset!r} yields no labels; "
                "set labeled: false for label-free distillation"
            ]
        )
    return WithoutLabels(transfer_set) if has_labels and not transfer.labeled else transfer_set
