"""A recipe's teacher cache (``data.teacher_cache``, ``teacher: cache`` terms): which teacher
``torchkd cache-teacher`` runs, at which temperature, and the checks that training makes of a
written cache against its recipe before anything runs."""

from __future__ import annotations

from collections.abc import Sequence

from torchkd.config.build_terms import build_term
from torchkd.config.errors import ConfigError, blame
from torchkd.config.schema import ModelConfig, Recipe
from torchkd.terms import CACHE

__all__ = [
    "CACHED_SPLITS",
    "cache_teacher",
    "cache_temperature",
    "check_cache_terms",
    "check_teacher_cache",
    "recipe_teacher_source",
]

CACHED_SPLITS = ("train", "val")  # the splits whose terms are computed (data.teacher_cache)


def _check_own_tokenizer(recipe: Recipe) -> None:
    """A teacher with its own tokenizer is cached as top-k in the student's layout
    (:mod:`torchkd.lm.cache.layout`), read by losses that compare vocabularies
    (``fused_linear_uld``); a sampled cache of it has no reader (ULD is not linear in the
    teacher's probabilities)."""
    from torchkd import losses

    if not recipe.data.kwargs.get("teacher_tokenizer"):
        return
    cache = recipe.data.teacher_cache
    if cache is not None and cache.kind != "topk":
        raise ConfigError(
            [
                "data.teacher_cache.kind: a teacher with its own tokenizer "
                "(data.kwargs.teacher_tokenizer) is cached as kind: topk only (its terms "
                "compare vocabularies by ULD, which a sampled cache would bias), got "
                f"{cache.kind!r}"
            ]
        )
    for index, term in enumerate(recipe.terms):
        if term.teacher != CACHE:
            continue
        with blame(f"terms.{index}.loss"):
            entry = losses.entry(term.loss)
        if not entry.compares_shapes or entry.signature != "hidden_states":
            raise ConfigError(
                [
                    f"terms.{index}.loss: a term reading the cache of a teacher with its own "
                    f"tokenizer (data.kwargs.teacher_tokenizer) must compare vocabularies: use "
                    f"'fused_linear_uld', got {term.loss!r}"
                ]
            )


def cache_teacher(recipe: Recipe) -> tuple[ModelConfig, str]:
    """The teacher the cache-reading terms name (``teacher_index``) and its YAML path.

    Raises:
        ConfigError: the recipe has no teacher, its cache-reading terms name two, or the
            teacher has its own tokenizer (``data.kwargs.teacher_tokenizer``) and the cache
            is sampled or read by a loss that does not compare vocabularies.
    """
    _check_own_tokenizer(recipe)
    indices = {term.teacher_index for term in recipe.terms if term.teacher == CACHE}
    configs = recipe.teacher_configs
    if not configs:
        raise ConfigError(["teacher: torchkd cache-teacher runs the recipe's teacher; set one"])
    if len(indices) > 1:
        raise ConfigError([f"terms: the terms that read the cache name teachers {sorted(indices)}"])
    if not indices:
        raise ConfigError(["terms: no term reads the teacher cache (teacher: cache)"])
    index = indices.pop()
    if index >= len(configs):
        raise ConfigError([f"terms: teacher_index {index}, but the recipe has {len(configs)}"])
    return configs[index], "teacher" if recipe.teacher is not None else f"teachers.{index}"


def _term_temperature(recipe: Recipe, index: int) -> tuple[float, str]:
    """The fixed temperature of term ``index`` (:func:`torchkd.terms.fixed_temperature` of the
    term the Distiller receives) and the YAML path it comes from (the term's ``temperature``,
    its loss's ``temperature`` argument, or that argument's default), checked as the losses
    check it (``0 < T <= MAX_TEMPERATURE``)."""
    from torchkd.losses._common import check_temperature
    from torchkd.terms import TermError, fixed_temperature

    path = f"terms.{index}"
    try:
        value, field = fixed_temperature(build_term(recipe, index))
    except TermError as error:
        raise ConfigError(
            [
                f"{path}.temperature: a term that reads the teacher cache needs a fixed "
                f"temperature (the cache's), got {recipe.terms[index].temperature!r}"
            ]
        ) from error
    with blame(f"{path}.{field}"):
        check_temperature(value)
    return value, f"{path}.{field}"


def cache_temperature(recipe: Recipe) -> float:
    """The temperature the recipe's teacher cache is written at: that of the terms whose
    ``teacher`` is ``cache`` (they must agree).

    Raises:
        ConfigError: no term reads the cache, or two of them at different temperatures.
    """
    indices = [i for i, term in enumerate(recipe.terms) if term.teacher == CACHE]
    if not indices:
        raise ConfigError(
            [
                "terms: no term reads the teacher cache (teacher: cache); the cache is written "
                "at the temperature of the terms that read it"
            ]
        )
    found = [_term_temperature(recipe, index) for index in indices]
    if len({value for value, _ in found}) > 1:
        listed = ", ".join(f"{path} = {value}" for value, path in found)
        raise ConfigError([f"terms: the terms that read the teacher cache differ: {listed}"])
    return found[0][0]


def check_cache_terms(recipe: Recipe) -> None:
    """Build the loss of every term that reads the cache from its ``loss_kwargs``, so that
    ``torchkd cache-teacher`` refuses the arguments training would refuse (e.g.
    ``chunk_size: 0``, or a divergence other than forward KL with a sampled cache) before it
    writes anything. Losses whose sizes come from probed shapes are checked by training
    only."""
    from torchkd import losses

    for index, term in enumerate(recipe.terms):
        if term.teacher != CACHE:
            continue
        with blame(f"terms.{index}.loss"):
            entry = losses.entry(term.loss)
        if entry.sizes is None:
            with blame(f"terms.{index}.loss_kwargs"):
                module = entry.module(**term.loss_kwargs)
            _check_sampled_divergence(recipe, index, module)


def _check_sampled_divergence(recipe: Recipe, index: int, module: object) -> None:
    """A sampled cache estimates forward KL only (:mod:`torchkd.losses.sampled`): refuse a
    cache-reading term whose loss compares another divergence, or ULD (not linear in the
    teacher's probabilities)."""
    from torchkd.losses.sampled import UNBIASED

    cache = recipe.data.teacher_cache
    options = getattr(module, "hyperparameters", dict)()
    if (
        cache is not None
        and cache.kind == "sampled"
        and recipe.terms[index].loss == "fused_linear_uld"
    ):
        raise ConfigError(
            [
                f"terms.{index}.loss: 'fused_linear_uld' cannot read a sampled teacher cache "
                "(data.teacher_cache.kind: sampled): ULD is not linear in the teacher's "
                "probabilities, so its sampled estimate would be biased; use a kind: topk cache"
            ]
        )
    if cache is None or cache.kind != "sampled" or "divergence" not in options:
        return
    divergence = options["divergence"]
    if divergence == "jsd" and options.get("beta") == 0:
        divergence = "forward_kl"  # JSD(0) is forward KL
    if divergence not in UNBIASED:
        raise ConfigError(
            [
                f"terms.{index}.loss_kwargs.divergence: a sampled teacher cache "
                f"(data.teacher_cache.kind: sampled) estimates {', '.join(UNBIASED)} only "
                f"without bias, got {options['divergence']!r}; use a kind: topk cache for it"
            ]
        )


def check_teacher_cache(recipe: Recipe, splits: Sequence[str] = CACHED_SPLITS) -> None:
    """Refuse a run whose ``teacher: cache`` terms read a ``data.teacher_cache`` (of the cached
    ones among ``splits``) that is missing, damaged (its manifest, see
    :func:`~torchkd.lm.cache.format.read_manifest`), written at another temperature, or
    written from another teacher than the recipe's (their
    :func:`~torchkd.lm.cache.format.source_fingerprint`: model, kwargs and weight files;
    checked when the recipe names its teacher), naming the YAML paths and the directory. The
    shards' digests are checked when the cache is read (:func:`build_datasets`)."""
    from torchkd.lm.cache import read_manifest, split_directory

    indices = [i for i, term in enumerate(recipe.terms) if term.teacher == CACHE]
    cache = recipe.data.teacher_cache
    if cache is None or not indices:
        return  # without data.teacher_cache, the dataset itself may carry teacher_topk_*
    _check_own_tokenizer(recipe)
    if cache.kind == "sampled":
        check_cache_terms(recipe)
    teacher_source = None
    for split in [name for name in CACHED_SPLITS if name in splits]:
        directory = split_directory(cache.dir, split)
        with blame(f"data.teacher_cache.dir ({split} split)"):
            manifest = read_manifest(directory)
        _check_temperature(recipe, indices, float(manifest["temperature"]), cache.dir)
        if manifest["teacher_source"] is None or not recipe.teacher_configs:
            continue
        teacher, path = cache_teacher(recipe)
        if teacher_source is None:
            with blame(path):
                teacher_source = recipe_teacher_source(teacher)
        if teacher_source != manifest["teacher_source"]:
            raise ConfigError(
                [
                    f"{path}: the teacher cache in {directory} (data.teacher_cache.dir) was "
                    f"written from another teacher (source fingerprint "
                    f"{manifest['teacher_source'][:16]}..., this recipe's {path} is "
                    f"{teacher_source[:16]}...: its model, kwargs or weights differ); write "
                    "its cache with `torchkd cache-teacher RECIPE --dir NEW_DIR`"
                ]
            )


def _check_temperature(recipe: Recipe, indices: list[int], written: float, where: str) -> None:
    for index in indices:
        value, path = _term_temperature(recipe, index)
        if value != written:
            raise ConfigError(
                [
                    f"{path}: the term reads the teacher cache at temperature {value}, but the "
                    f"cache in {where} (data.teacher_cache.dir) was written at temperature "
                    f"{written}; set the term's temperature to {written}, or write a cache at "
                    f"{value} with `torchkd cache-teacher RECIPE --dir NEW_DIR`"
                ]
            )


def recipe_teacher_source(teacher: ModelConfig) -> str:
    """The cache's ``teacher_source`` of a recipe's teacher: its model, kwargs and weight file
    (:func:`torchkd.lm.cache.format.source_fingerprint`); flags such as ``untrained`` do not
    change what the teacher computes, so they are not part of it."""
    from torchkd.lm.cache.format import source_fingerprint

    return source_fingerprint(teacher.model, teacher.kwargs, teacher.checkpoint)
