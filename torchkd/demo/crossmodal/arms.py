"""The cross-modal demo's arms and jobs: each embeds the held-out code (and, for the
contrastive arm, the held-out docstrings in its own space); the teacher job reads the
teacher's embeddings of the held-out docstrings (computed once and cached,
:mod:`torchkd.demo.crossmodal.teacher`).

- ``untrained``: the code student at its initialisation (the seed's), a floor;
- ``minilm_code``: the teacher itself reading the code as text (no training, one run): what
  the pretrained model gives without distillation;
- ``contrastive``: the student trained with its own docstring encoder, no teacher
  (:mod:`torchkd.demo.crossmodal.contrastive`); its docstrings are embedded by that encoder;
- ``kd``: the student distilled from the teacher reading the docstrings, through the
  ordinary engine (:func:`torchkd.config.fit_recipe` on ``configs/crossmodal/kd.yaml``).

Every arm but ``contrastive`` ranks the held-out docstrings in the teacher's space (its
embeddings of them).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from torchkd.demo.workers import run_threads
from torchkd.forward import call_model

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = [
    "ARMS",
    "QUICK_OVERRIDES",
    "CrossArm",
    "Encoded",
    "arm_recipe",
    "embed",
    "encode_arm",
    "encode_teacher",
    "held_out",
]


@dataclass(frozen=True)
class CrossArm:
    """One row of the table: its key, text, and whether it depends on the seed."""

    key: str
    label: str
    seeded: bool = True


ARMS: tuple[CrossArm, ...] = (
    CrossArm("untrained", "student, untrained (floor)"),
    CrossArm("minilm_code", "teacher reading the code (no training)", seeded=False),
    CrossArm("contrastive", "student + own docstring encoder, InfoNCE (no teacher)"),
    CrossArm("kd", "student distilled from the teacher's docstring embeddings"),
)
RECIPE = "kd.yaml"

# --quick: a few steps on a few pairs of the first files (a smoke test, not a result).
QUICK_OVERRIDES = (
    "data.kwargs.max_files=80",
    "data.kwargs.train_pairs=64",
    "data.kwargs.val_pairs=16",
    "data.kwargs.test_pairs=32",
    "data.kwargs.vocab_size=512",
    "student.kwargs.vocab_size=512",
    "train.epochs=1",
)


@dataclass
class Encoded:
    """One job's embeddings of the held-out pairs.

    Attributes:
        arm: the arm's key (``"teacher"`` for the teacher's docstring embeddings).
        seed: the seed (0 for unseeded jobs).
        code: ``[N, D]`` code embeddings (the teacher job's docstring embeddings).
        docs: ``[N, D]`` docstring embeddings in the arm's own space (contrastive), else None.
        seconds: wall time of the job (training included).
        history: the training run's epoch records.
    """

    arm: str
    seed: int
    code: Tensor
    docs: Tensor | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def recipe_path() -> Path:
    """``torchkd/configs/crossmodal/kd.yaml``."""
    return Path(str(resources.files("torchkd") / "configs" / "crossmodal" / RECIPE))


def arm_recipe(seed: int, overrides: Sequence[str] = ()) -> Recipe:
    """The demo recipe with ``overrides`` and ``train.seed=seed``."""
    from torchkd.config import load_recipe

    return load_recipe(recipe_path(), ["train.progress=false", *overrides, f"train.seed={seed}"])


def held_out(recipe: Recipe) -> list[dict[str, Any]]:
    """The recipe's test split (the held-out modules' pairs) as a list of batches."""
    from torchkd.config import build_loaders

    loader = build_loaders(recipe.data, splits=["test"]).test
    assert loader is not None
    return list(loader)


def embed(model: nn.Module, batches: Sequence[dict[str, Any]], view: str) -> Tensor:
    """``model``'s float32 outputs on each batch's ``view`` entry, concatenated (eval mode,
    no gradients; the previous mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([call_model(model, batch[view]).float() for batch in batches])
    finally:
        model.train(was_training)


def _code_as_text(recipe: Recipe) -> list[dict[str, Any]]:
    """The held-out code in the teacher's tokens (the first ``code_length``, as the student's),
    in the test split's order."""
    from torchkd.config import build_datasets
    from torchkd.demo.embeddings.data import load_tokenizer

    dataset = build_datasets(recipe.data, ["test"])["test"]
    tokenizer = load_tokenizer(recipe.data.kwargs.get("teacher_dir"))
    code = [pair.code for pair in dataset.pairs]
    size = recipe.data.eval_batch_size or recipe.data.batch_size
    batches = []
    for start in range(0, len(code), size):
        encoded = tokenizer(
            code[start : start + size],
            padding=True,
            truncation=True,
            max_length=recipe.data.kwargs.get("code_length", 128),
            return_tensors="pt",
        )
        batches.append({"inputs": {key: encoded[key] for key in ("input_ids", "attention_mask")}})
    return batches


def _distil(recipe: Recipe, run_dir: Path) -> tuple[nn.Module, list[dict[str, Any]]]:
    """The kd arm: the recipe through the engine; the run's checkpoints are removed after."""
    from torchkd.config import build_model, fit_recipe
    from torchkd.train import export_student

    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = fit_recipe(recipe, run_dir, evaluate_test=False)
    weights = run_dir / "student.safetensors"
    export_student(result.last_checkpoint, weights)
    shutil.rmtree(run_dir / "checkpoints")
    spec = recipe.student.model_copy(update={"checkpoint": str(weights)})
    return build_model(spec), result.history


def encode_arm(arm_key: str, seed: int, overrides: Sequence[str], run_dir: str) -> Encoded:
    """Build (and train, for a trained arm) one arm at ``seed`` and embed the held-out pairs;
    one torch thread."""
    from torchkd.config import build_model
    from torchkd.demo.crossmodal.contrastive import train_contrastive
    from torchkd.demo.embeddings.models import minilm_teacher
    from torchkd.train.rng import seed_everything

    recipe = arm_recipe(seed, overrides)
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    docs = None
    with run_threads():
        batches = held_out(recipe)
        if arm_key == "untrained":
            seed_everything(seed)
            code = embed(build_model(recipe.student), batches, "inputs")
        elif arm_key == "minilm_code":
            teacher = minilm_teacher(recipe.data.kwargs.get("teacher_dir"))
            code = embed(teacher, _code_as_text(recipe), "inputs")
        elif arm_key == "contrastive":
            student, doc_encoder, history = train_contrastive(recipe)
            code = embed(student, batches, "inputs")
            docs = embed(doc_encoder, batches, "doc_inputs")
        elif arm_key == "kd":
            student, history = _distil(recipe, Path(run_dir))
            code = embed(student, batches, "inputs")
        else:
            raise ValueError(f"unknown arm {arm_key!r}; the arms are {[a.key for a in ARMS]}")
    return Encoded(arm_key, seed, code, docs, time.perf_counter() - started, history)


def encode_teacher(overrides: Sequence[str]) -> Encoded:
    """The teacher's embeddings of the held-out docstrings (the recipe's pass-through teacher
    on the cached rows); one torch thread."""
    from torchkd.config import build_model

    recipe = arm_recipe(0, overrides)
    assert recipe.teacher is not None
    started = time.perf_counter()
    with run_threads():
        teacher = build_model(recipe.teacher, "teacher")
        docs = embed(teacher, held_out(recipe), "teacher_inputs")
    return Encoded("teacher", 0, docs, None, time.perf_counter() - started)
