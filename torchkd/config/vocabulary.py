"""The check that a recipe's tokenizer fits its language models: every token id the tokenizer
can produce must index each model's input embeddings (else training fails deep inside an
embedding lookup with an ``IndexError``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchkd.config.errors import ConfigError
from torchkd.config.schema import ModelConfig, Recipe

if TYPE_CHECKING:
    from torch import nn

__all__ = ["check_vocabulary"]


def _vocabulary_path(spec: ModelConfig, where: str) -> str:
    """The YAML path that sets the vocabulary size of the model built from ``spec``."""
    config = spec.kwargs.get("config")
    if isinstance(config, dict) and "vocab_size" in config:
        return f"{where}.kwargs.config.vocab_size"
    if "path" in spec.kwargs:
        return f"{where}.kwargs.path"
    return f"{where}.model"


def check_vocabulary(recipe: Recipe, models: list[tuple[nn.Module, ModelConfig, str]]) -> None:
    """Refuse a tokenizer (``data.kwargs.tokenizer``; for the teachers
    ``data.kwargs.teacher_tokenizer`` when set) with more tokens than a model has rows of
    input embeddings.

    Args:
        recipe: the recipe.
        models: ``(model, its spec, its YAML path)`` for the student and each teacher built.

    Raises:
        ConfigError: naming ``data.kwargs.tokenizer`` and the model's vocabulary path.
    """
    from torchkd.data.tokenizer import load_tokenizer

    paths = {key: recipe.data.kwargs.get(key) for key in ("tokenizer", "teacher_tokenizer")}
    sizes = {key: len(load_tokenizer(path)) for key, path in paths.items() if isinstance(path, str)}
    problems = []
    for model, spec, where in models:
        key = (
            "teacher_tokenizer"
            if where != "student" and "teacher_tokenizer" in sizes
            else "tokenizer"
        )
        if key not in sizes:
            continue
        tokenizer_path, tokens = paths[key], sizes[key]
        embeddings = getattr(model, "get_input_embeddings", None)
        rows = getattr(embeddings() if callable(embeddings) else None, "num_embeddings", None)
        if rows is not None and tokens > rows:
            problems.append(
                f"data.kwargs.{key}: {tokenizer_path} has {tokens} tokens, but "
                f"{_vocabulary_path(spec, where)} gives the {where} a vocabulary of {rows}; "
                "the vocabulary must hold every token id (at least the tokenizer's size)"
            )
    if problems:
        raise ConfigError(problems)
