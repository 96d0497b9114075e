"""Building a run from a recipe: models (with their weights), the loaders (:func:`build_loaders`,
the one loader builder), the loss terms and the Distiller."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from torchkd._registry import did_you_mean
from torchkd.config.errors import ConfigError, blame
from torchkd.config.schema import DataConfig, ModelConfig, OnPolicyConfig, Recipe, is_number
from torchkd.config.teacher_cache import CACHED_SPLITS, check_teacher_cache
from torchkd.config.vocabulary import check_vocabulary
from torchkd.terms import CACHE
from torchkd.train.config import TrainConfig

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from torchkd.distiller import Distiller, Term
    from torchkd.lm.on_policy import OnPolicy

__all__ = [
    "Built",
    "Loaders",
    "build_datasets",
    "build_distiller",
    "build_from_recipe",
    "build_loaders",
    "build_model",
    "build_on_policy",
    "build_terms",
    "check_teacher_weights",
    "reads_teacher_models",
    "term_path",
]


def _model_factory(name: str) -> Any:
    """The class or factory a recipe's ``model`` names (registered, or ``module:Class``)."""
    from torchkd.models import MODELS

    return MODELS.resolve(name)


def build_model(spec: ModelConfig, path: str = "student") -> nn.Module:
    """Instantiate ``spec.model`` with ``spec.kwargs`` and load ``spec.checkpoint`` if given.

    ``model`` is a registered name (:func:`torchkd.models.create_model`) or ``"package.module:
    Class"`` for your own ``nn.Module``. ``checkpoint`` is a ``.safetensors`` file, a torchkd
    training checkpoint (its student weights are used) or a ``torch.save``-d state dict.
    """
    from torchkd.train.checkpoint import load_student_weights

    with blame(f"{path}.model"):
        factory = _model_factory(spec.model)
    _check_arguments(factory, spec.kwargs, f"{path}.kwargs")
    with blame(f"{path}.kwargs"):
        model = factory(**spec.kwargs)
    if spec.checkpoint is not None:
        _check_weights_exist(spec.checkpoint, f"{path}.checkpoint")
        with blame(f"{path}.checkpoint"):
            weights = load_student_weights(spec.checkpoint)
            try:
                model.load_state_dict(weights)
            except RuntimeError as error:
                raise ValueError(
                    f"the weights in {spec.checkpoint} do not fit model {spec.model!r} with "
                    f"kwargs {spec.kwargs}: {error}"
                ) from error
    return model


def check_teacher_weights(spec: ModelConfig, path: str) -> None:
    """Refuse a teacher that would distil its random initial weights by mistake: one with no
    ``checkpoint`` whose recipe says neither ``pretrained: true`` (its constructor loads trained
    weights) nor ``untrained: true`` (on purpose). A ``kwargs.path`` (the local directory a
    Hugging Face model, ``hf_causal_lm`` / ``hf_encoder``, loads its trained weights from) says
    ``pretrained`` by itself."""
    pretrained = spec.pretrained or "path" in spec.kwargs
    if spec.checkpoint is None and not pretrained and not spec.untrained:
        raise ConfigError(
            [
                f"{path}.checkpoint: required: without it the teacher ({spec.model}) keeps its "
                f"random initial weights and the run distils noise; set {path}.checkpoint=PATH "
                "(e.g. runs/<teacher run>/checkpoints/best.pt), or say "
                f"{path}.pretrained=true if its constructor loads trained weights, or "
                f"{path}.untrained=true to distil an untrained teacher on purpose"
            ]
        )


def _check_weights_exist(checkpoint: str, path: str) -> None:
    """A missing weights file is refused saying how to make it: ``runs/NAME/...`` is written by
    ``torchkd train`` of the recipe named NAME (the shipped one is named when it exists)."""
    file = Path(checkpoint)
    if file.is_file():
        return
    hint = "point it at a torchkd checkpoint, a .safetensors file or a saved state dict"
    if len(file.parts) > 2 and file.parts[0] == "runs":
        run_name = file.parts[1]
        shipped = _shipped_recipe(run_name)
        command = f"torchkd train {shipped}" if shipped else f"a recipe named {run_name!r}"
        hint = f"train its run first ({command}), or {hint}"
    raise ConfigError([f"{path}: {checkpoint} does not exist; {hint}"])


def _shipped_recipe(name: str) -> str | None:
    """``configs/<group>/<file>.yaml`` of the shipped recipe whose ``name`` is ``name``."""
    from importlib import resources

    import yaml

    root = Path(str(resources.files("torchkd") / "configs"))
    for recipe in sorted(root.rglob("*.yaml")):
        data = yaml.safe_load(recipe.read_text())
        if isinstance(data, dict) and data.get("name") == name:
            return f"configs/{recipe.relative_to(root).as_posix()}"
    return None


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
) -> Loaders:
    """The loaders of ``data``: the one loader builder of every run.

    ``torchkd train``, tuning trials and their retrain, teacher-selection probes and the demo
    all load through here, so they see the same batches for the same recipe and seed
    (augmentation and transfer set included).

    Args:
        data: the recipe's ``data:`` section. With ``data.transfer`` the transfer set is the
            training split; ``data.augment`` applies to the training loader only;
            ``data.teacher_cache`` adds the cached teacher to the training and validation
            samples.
        seed: seeds the training shuffle (the trainer reseeds it every epoch from
            ``(seed, epoch)``) and the ``train_samples`` selection.
        splits: which loaders to build; a search asks for ``("train", "val")`` so the test
            split is never built.
        train_samples: keep only this many training samples, the first of a permutation
            seeded by ``seed`` (probes shorter than one epoch).

    Example:
        >>> from torchkd.config import DataConfig
        >>> loaders = build_loaders(DataConfig(dataset="digits", batch_size=32), splits=["val"])
        >>> loaders.train is None, next(iter(loaders.val))["inputs"].shape[0]
        (True, 32)
    """
    import torch

    from torchkd.data import RowsView
    from torchkd.data.batching import Augment, batch_loader

    datasets = build_datasets(data, splits)
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


def build_datasets(data: DataConfig, splits: Sequence[str] = SPLIT_NAMES) -> dict[str, Any]:
    """The datasets of ``data`` by split name: the transfer set as the training split when
    ``data.transfer`` is set, and the training and validation splits read with the teacher
    cache when ``data.teacher_cache`` is (:class:`~torchkd.lm.cache.TeacherCacheDataset`;
    the validation split's terms are evaluated every epoch, the test split's are not)."""
    from torchkd.data import create_dataset

    unknown = [split for split in splits if split not in SPLIT_NAMES]
    if unknown or not splits:
        raise ValueError(f"splits: expected a non-empty subset of {SPLIT_NAMES}, got {splits}")
    split_kwargs = {"val_fraction": data.val_fraction, "split_seed": data.seed, **data.kwargs}
    _check_dataset(data.dataset, "data.dataset", ["split", *split_kwargs])
    if data.transfer is not None:
        transfer_keys = ["split", "num_samples", "seed", *data.transfer.kwargs]
        _check_dataset(data.transfer.dataset, "data.transfer.dataset", transfer_keys)
    datasets: dict[str, Any] = {}
    with blame("data"):
        for split in splits:
            if split != "train" or data.transfer is None:
                datasets[split] = create_dataset(data.dataset, split, **split_kwargs)
    if "train" in splits and data.transfer is not None:
        datasets["train"] = _transfer_set(data)
    if data.teacher_cache is not None:
        from torchkd.lm.cache import TeacherCacheDataset, split_directory

        cache = data.teacher_cache
        for split in [name for name in CACHED_SPLITS if name in splits]:
            with blame(f"data.teacher_cache ({split} split)"):
                datasets[split] = TeacherCacheDataset(
                    datasets[split], split_directory(cache.dir, split), k=cache.k
                )
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


def _schedule_value(value: Any, path: str) -> Any:
    """A number or a literal passes through; a schedule mapping becomes a schedule object."""
    if not isinstance(value, dict):
        return float(value) if is_number(value) else value
    from torchkd import schedules

    options = {key: item for key, item in value.items() if key != "name"}
    with blame(path):
        return schedules.create(value["name"], **options)


def _check_arguments(factory: Callable[..., Any], kwargs: dict[str, Any], path: str) -> None:
    """Refuse keyword arguments ``factory`` does not take, naming each one's YAML path and the
    closest accepted name."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [name for name in parameters if name != "self"]
    problems = [
        f"{path}.{key}: unknown argument of {getattr(factory, '__name__', factory)}"
        f"{did_you_mean(key, accepted)} (it takes {', '.join(accepted) or 'no arguments'})"
        for key in kwargs
        if key not in accepted
    ]
    if problems:
        raise ConfigError(problems)


def build_terms(recipe: Recipe) -> list[Term]:
    """The :class:`~torchkd.distiller.Term` list of ``recipe.terms``: loss names and argument
    names are checked here; each loss is built once, by :meth:`Distiller.build`."""
    from torchkd import losses
    from torchkd.distiller import Term

    terms = []
    for index, spec in enumerate(recipe.terms):
        with blame(f"terms.{index}.loss"):
            module = losses.entry(spec.loss).module
        _check_arguments(module, spec.loss_kwargs, f"terms.{index}.loss_kwargs")
        terms.append(
            Term(
                name=spec.name,
                loss=spec.loss,
                loss_kwargs=dict(spec.loss_kwargs),
                weight=_schedule_value(spec.weight, f"terms.{index}.weight"),
                student=spec.student,
                teacher=spec.teacher,
                adapter=spec.adapter,
                temperature=_schedule_value(spec.temperature, f"terms.{index}.temperature"),
                teacher_index=spec.teacher_index,
                global_batch=spec.global_batch,
            )
        )
    return terms


def build_distiller(recipe: Recipe) -> Distiller:
    """Student, teachers (frozen by the Distiller) and terms of ``recipe`` as a Distiller."""
    from torchkd.distiller import Distiller

    student = build_model(recipe.student, "student")
    teacher_paths = (
        ["teacher"]
        if recipe.teacher
        else [f"teachers.{i}" for i in range(len(recipe.teacher_configs))]
    )
    built_teachers = []
    if reads_teacher_models(recipe):
        for spec, where in zip(recipe.teacher_configs, teacher_paths, strict=True):
            check_teacher_weights(spec, where)
            built_teachers.append((build_model(spec, where), spec, where))
    check_vocabulary(recipe, [(student, recipe.student, "student"), *built_teachers])
    teachers = [teacher for teacher, _, _ in built_teachers]
    from torchkd.distiller import TermError

    terms = build_terms(recipe)
    on_policy = None
    if recipe.on_policy is not None:
        on_policy = build_on_policy(recipe.on_policy, recipe.train.seed)
    try:
        return Distiller(
            student, teachers or None, terms, output_key=recipe.output_key, on_policy=on_policy
        )
    except TermError as error:
        raise ConfigError([f"{term_path(recipe, error)}: {error}"]) from error


def reads_teacher_models(recipe: Recipe) -> bool:
    """Whether a term (or on-policy sampling) runs the teachers: a recipe whose teacher-reading
    terms all read the teacher cache trains with no teacher model in memory (its ``teacher:``
    is what ``torchkd cache-teacher`` runs)."""
    from torchkd import losses

    return recipe.on_policy is not None or any(
        term.teacher != CACHE
        and (term.loss not in losses.available() or losses.entry(term.loss).signature != "labels")
        for term in recipe.terms
    )


def build_on_policy(spec: OnPolicyConfig, default_seed: int = 0) -> OnPolicy:
    """The :class:`~torchkd.lm.on_policy.OnPolicy` of a recipe's ``on_policy:`` section; its seed
    defaults to ``default_seed`` (the recipe's ``train.seed``)."""
    from torchkd.lm.on_policy import OnPolicy

    options = spec.model_dump()
    if options["seed"] is None:
        options["seed"] = default_seed
    with blame("on_policy"):
        return OnPolicy(**options)


class Built(NamedTuple):
    """What :func:`build_from_recipe` returns (unpacks as a tuple)."""

    distiller: Distiller
    loaders: Loaders
    train_config: TrainConfig


def build_from_recipe(
    recipe: Recipe, *, splits: Sequence[str] = SPLIT_NAMES, train_samples: int | None = None
) -> Built:
    """Seed with ``recipe.train.seed``, then build the distiller, the loaders and the config.

    The one place a recipe's run is seeded: before the models are built, so their initial
    weights are a function of the recipe (:func:`torchkd.train.fit` does not reseed).
    ``splits`` and ``train_samples`` go to :func:`build_loaders`.
    """
    from torchkd.train.rng import seed_everything

    check_teacher_cache(recipe, splits)
    seed_everything(recipe.train.seed)
    distiller = build_distiller(recipe)
    loaders = build_loaders(
        recipe.data, seed=recipe.train.seed, splits=splits, train_samples=train_samples
    )
    return Built(distiller, loaders, recipe.train)


def term_path(recipe: Recipe, error: Any) -> str:
    """``terms.N[.field[.argument]]`` of a :class:`~torchkd.distiller.TermError`."""
    index = next(i for i, term in enumerate(recipe.terms) if term.name == error.term)
    path = f"terms.{index}"
    message = str(error).removeprefix(f"term {error.term!r}: ")
    named = [key for key in recipe.terms[index].loss_kwargs if message.startswith(key)]
    if error.field in ("", "loss_kwargs") and named:
        return f"{path}.loss_kwargs.{named[0]}"
    return f"{path}.{error.field}" if error.field else path
