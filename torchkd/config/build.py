"""Building a run from a recipe (:func:`build_from_recipe`), one module a job: models with
their weights (:mod:`~torchkd.config.build_models`), datasets and loaders
(:mod:`~torchkd.config.build_data`; a synthetic training set:
:mod:`~torchkd.config.build_synthetic`), the terms, the on-policy sampler and the Distiller
(:mod:`~torchkd.config.build_terms`), and the argument checks they share
(:mod:`~torchkd.config.arguments`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from torchkd.config.build_data import SPLIT_NAMES, Loaders, build_datasets, build_loaders
from torchkd.config.build_models import build_model, check_teacher_weights
from torchkd.config.build_synthetic import check_synthetic
from torchkd.config.build_terms import (
    build_distiller,
    build_on_policy,
    build_terms,
    reads_teacher_models,
    term_path,
)
from torchkd.config.schema import Recipe
from torchkd.config.teacher_cache import check_teacher_cache
from torchkd.config.teacher_server import teacher_server_client
from torchkd.train.config import TrainConfig

if TYPE_CHECKING:
    from torchkd.distiller import Distiller

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
    ``splits`` and ``train_samples`` go to :func:`build_loaders`, with the client of a
    teacher server (``teacher: {server: URL}``, checked first).
    """
    from torchkd.train.rng import seed_everything

    check_teacher_cache(recipe, splits)
    server = teacher_server_client(recipe)
    check_synthetic(recipe)
    seed_everything(recipe.train.seed)
    distiller = build_distiller(recipe)
    loaders = build_loaders(
        recipe.data,
        seed=recipe.train.seed,
        splits=splits,
        train_samples=train_samples,
        teacher_server=server,
        distiller=distiller,
    )
    return Built(distiller, loaders, recipe.train)
