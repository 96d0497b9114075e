"""Recipes: the YAML schema, its error messages, ``key=value`` overrides, loading, and the one
path from a recipe to a trained run (:func:`fit_recipe`).

Layer 4: it composes the engine (:mod:`torchkd.train`, whose ``train:`` section it reuses),
the Distiller, models and data; nothing below imports it.
"""

from __future__ import annotations

from torchkd.config.build import (
    Built,
    Loaders,
    build_datasets,
    build_distiller,
    build_from_recipe,
    build_loaders,
    build_model,
    build_on_policy,
    build_terms,
    check_teacher_weights,
)
from torchkd.config.errors import ConfigError
from torchkd.config.loading import (
    load_raw_recipe,
    load_recipe,
    recipe_from_dict,
    write_resolved_config,
)
from torchkd.config.overrides import apply_overrides
from torchkd.config.run import check_built, check_resumable, fit_recipe, recipe_changes
from torchkd.config.schema import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    OnPolicyConfig,
    Recipe,
    TeacherCacheConfig,
    TeacherServerConfig,
    TermConfig,
    TransferConfig,
)
from torchkd.config.teacher_cache import cache_teacher, cache_temperature, check_teacher_cache
from torchkd.config.tune_schema import SearchParam, TuneConfig
from torchkd.train.config import LRScheduleConfig, OptimizerConfig, TrainConfig

__all__ = [
    "AugmentConfig",
    "Built",
    "ConfigError",
    "DataConfig",
    "LRScheduleConfig",
    "Loaders",
    "ModelConfig",
    "OnPolicyConfig",
    "OptimizerConfig",
    "Recipe",
    "SearchParam",
    "TeacherCacheConfig",
    "TeacherServerConfig",
    "TermConfig",
    "TrainConfig",
    "TransferConfig",
    "TuneConfig",
    "apply_overrides",
    "build_datasets",
    "build_distiller",
    "build_from_recipe",
    "build_loaders",
    "build_model",
    "build_on_policy",
    "build_terms",
    "cache_teacher",
    "cache_temperature",
    "check_built",
    "check_resumable",
    "check_teacher_cache",
    "check_teacher_weights",
    "fit_recipe",
    "load_raw_recipe",
    "load_recipe",
    "recipe_changes",
    "recipe_from_dict",
    "write_resolved_config",
]
