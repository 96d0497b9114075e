"""What a recipe whose teacher has its own tokenizer (``data.kwargs.teacher_tokenizer``) adds
to its Distiller: the teachers run on the batch's ``teacher_inputs`` (the same text in the
teacher's tokens, :mod:`torchkd.data.aligned_text`), and a ``hybrid_uld`` term gets the map of
the tokens both vocabularies share (``shared_ids``, unless the term sets it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchkd.config.errors import ConfigError
from torchkd.config.schema import Recipe
from torchkd.lm.aligned import TEACHER_INPUTS
from torchkd.terms import CACHE

__all__ = ["TEACHER_TOKENIZER_KEY", "cross_tokenizer_kwargs", "teacher_inputs_key"]


def _cached_vocab_size(recipe: Recipe, loss_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``teacher_vocab_size`` from the manifest of ``data.teacher_cache`` once it is written
    (``torchkd cache-teacher`` builds the terms before it writes the cache)."""
    cache = recipe.data.teacher_cache
    if cache is None or "teacher_vocab_size" in loss_kwargs:
        return {}
    from torchkd.lm.cache import MANIFEST, read_manifest

    if not (Path(cache.dir) / MANIFEST).is_file():
        return {}
    return {"teacher_vocab_size": int(read_manifest(cache.dir)["vocab_size"])}


TEACHER_TOKENIZER_KEY = "teacher_tokenizer"  # in data.kwargs


def teacher_inputs_key(recipe: Recipe) -> str | None:
    """``"teacher_inputs"`` when the recipe's teacher has its own tokenizer, else None (the
    teachers read the student's inputs).

    Raises:
        ConfigError: with ``on_policy``, whose sampled continuations exist in the student's
            tokens only, or with ``data.teacher_inputs`` (the key is the dataset's).
    """
    if not recipe.data.kwargs.get(TEACHER_TOKENIZER_KEY):
        return None
    if recipe.data.teacher_inputs is not None:
        raise ConfigError(
            [
                "data.teacher_inputs: a teacher with its own tokenizer "
                f"(data.kwargs.{TEACHER_TOKENIZER_KEY}) reads the dataset's {TEACHER_INPUTS!r}; "
                "leave data.teacher_inputs unset"
            ]
        )
    if recipe.on_policy is not None:
        raise ConfigError(
            [
                "on_policy: the student's sampled continuations have no teacher tokenization "
                "(data.kwargs.teacher_tokenizer); distil across tokenizers on the dataset's "
                "text only"
            ]
        )
    return TEACHER_INPUTS


def cross_tokenizer_kwargs(recipe: Recipe, index: int) -> dict[str, Any]:
    """The loss arguments term ``index`` gets from the recipe's tokenizers: ``shared_ids`` of
    a ``hybrid_uld`` term (the student's ``data.kwargs.tokenizer`` against the teacher's
    ``data.kwargs.teacher_tokenizer``, or against itself without one), and the
    ``teacher_vocab_size`` of a ``fused_linear_uld`` term reading a written teacher cache (its
    manifest's ``vocab_size``); none otherwise, and none the term sets."""
    spec = recipe.terms[index]
    if spec.loss == "fused_linear_uld" and spec.teacher == CACHE:
        return _cached_vocab_size(recipe, spec.loss_kwargs)
    tokenizer = recipe.data.kwargs.get("tokenizer")
    if spec.loss != "hybrid_uld" or "shared_ids" in spec.loss_kwargs or not tokenizer:
        return {}
    from torchkd.data.shared_vocabulary import shared_vocabulary
    from torchkd.data.tokenizer import load_tokenizer

    student = load_tokenizer(tokenizer)
    teacher_path = recipe.data.kwargs.get(TEACHER_TOKENIZER_KEY)
    teacher = load_tokenizer(teacher_path) if teacher_path else student
    return {"shared_ids": shared_vocabulary(student, teacher)}
