"""The language-model demo's recipes and its teacher: ``torchkd/configs/demo_lm/*.yaml`` with
the corpus filled in, and the teacher trained once through :func:`torchkd.config.fit_recipe`
and cached as safetensors, keyed by everything that determines its weights."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd.demo.workers import run_threads

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = [
    "TEACHER_RECIPE",
    "corpus_overrides",
    "lm_recipe",
    "lm_recipe_path",
    "teacher_fingerprint",
    "teacher_weights_path",
    "train_teacher",
]

TEACHER_RECIPE = "teacher.yaml"
_TEACHER_CODE = "demo/lm/teacher.py"  # this file: it trains and exports the teacher
_HF_LIBRARIES = ("transformers", "tokenizers")


def lm_recipe_path(name: str) -> Path:
    """Path of a recipe shipped in ``torchkd/configs/demo_lm/`` (e.g. ``"forward_kl.yaml"``)."""
    return Path(str(resources.files("torchkd") / "configs" / "demo_lm" / name))


def corpus_overrides(files: Sequence[Path], tokenizer: Path) -> list[str]:
    """The overrides that point a demo recipe's ``text`` dataset at the corpus and tokenizer
    (the shipped recipes leave ``data.kwargs.files`` and ``data.kwargs.tokenizer`` to the
    demo: the standard library's location depends on the interpreter)."""
    return [
        f"data.kwargs.files={json.dumps([str(path) for path in files])}",
        f"data.kwargs.tokenizer={json.dumps(str(tokenizer))}",
    ]


def lm_recipe(name: str, overrides: Sequence[str] = ()) -> Recipe:
    """The demo recipe ``name`` with ``overrides`` (and no progress bars)."""
    from torchkd.config import load_recipe

    return load_recipe(lm_recipe_path(name), ["train.progress=false", *overrides])


def teacher_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """Everything the teacher's weights depend on: the resolved recipe, the torchkd code that
    trains it (:func:`torchkd.demo.fingerprint.teacher_fingerprint`, plus this module), the
    library versions and the SHA-256 of every corpus file (their paths alone do not say which
    Python wrote them)."""
    from torchkd.data.documents import file_digest, resolve_files
    from torchkd.demo import fingerprint

    root = fingerprint.package_root()
    return {
        **fingerprint.teacher_fingerprint(recipe.model_dump(mode="json")),
        "lm_demo_source": fingerprint.source_digest([root / _TEACHER_CODE], root),
        "hf_versions": {library: metadata.version(library) for library in _HF_LIBRARIES},
        "files": [file_digest(path) for path in resolve_files(recipe.data.kwargs["files"])],
    }


def teacher_weights_path(recipe: Recipe) -> Path:
    """``teachers/<name>-<hash>.safetensors`` under :func:`torchkd.data.cache_dir`, the hash
    taken over :func:`teacher_fingerprint`."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key

    return (
        cache_dir()
        / "teachers"
        / f"{recipe.name}-{cache_key(teacher_fingerprint(recipe))}.safetensors"
    )


def train_teacher(overrides: Sequence[str], run_dir: str) -> tuple[Path, float]:
    """Train the teacher recipe with ``overrides`` into ``run_dir`` (a fresh directory, one
    torch thread) and cache its final weights.

    Returns:
        ``(cached weights path, training seconds)``.
    """
    from torchkd.config import fit_recipe
    from torchkd.train import export_student

    recipe = lm_recipe(TEACHER_RECIPE, overrides)
    if Path(run_dir).exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    with run_threads():
        result = fit_recipe(recipe, run_dir, evaluate_test=False, report=False)
    weights = export_student(result.last_checkpoint, teacher_weights_path(recipe))
    return weights, time.perf_counter() - started
