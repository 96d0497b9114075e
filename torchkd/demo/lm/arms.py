"""The language-model demo's arms: one recipe of ``torchkd/configs/demo_lm/`` each, trained at
one seed through :func:`torchkd.config.fit_recipe`, then measured on the held-out files."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torchkd.demo.arms import Arm, ArmRun
from torchkd.demo.lm.teacher import lm_recipe
from torchkd.demo.workers import run_threads

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = ["LM_ARMS", "held_out_loader", "lm_arm", "measure_lm_run", "train_lm_arm"]

LM_ARMS: tuple[Arm, ...] = (
    Arm("baseline", "baseline.yaml", "student alone (cross-entropy)"),
    Arm("forward_kl", "forward_kl.yaml", "forward KL"),
    Arm("reverse_kl", "reverse_kl.yaml", "reverse KL"),
    Arm("jsd", "jsd.yaml", "JSD(0.5)"),
    Arm("cache", "cache.yaml", "forward KL from the top-k cache"),
    Arm("on_policy", "on_policy.yaml", "on-policy JSD(0.5), λ = 0.5"),
)


def lm_arm(key: str) -> Arm:
    """The arm of :data:`LM_ARMS` called ``key``."""
    for arm in LM_ARMS:
        if arm.key == key:
            return arm
    raise ValueError(f"no language-model demo arm {key!r}; arms: {[a.key for a in LM_ARMS]}")


def held_out_loader(recipe_name: str, overrides: Sequence[str]) -> DataLoader:
    """The test split of a demo recipe's data (the held-out files), in order."""
    from torchkd.config import build_loaders

    data = lm_recipe(recipe_name, overrides).data
    if getattr(data, "teacher_cache", None) is not None:  # the test split has no cached teacher
        data = data.model_copy(update={"teacher_cache": None})
    loaders = build_loaders(data, splits=["test"])
    assert loaders.test is not None
    return loaders.test


def measure_lm_run(run: ArmRun, overrides: Sequence[str], teacher_predictions: str) -> ArmRun:
    """``run`` with the test metrics (:func:`~torchkd.demo.lm.metrics.evaluate_lm`) of its
    final student, against the teacher's test predictions (a safetensors file with a
    ``predictions`` tensor); one torch thread."""
    from safetensors.torch import load_file

    from torchkd.config import build_model
    from torchkd.demo.lm.metrics import evaluate_lm

    arm_overrides = [*overrides, f"train.seed={run.seed}"]
    recipe = lm_recipe(lm_arm(run.arm).recipe, arm_overrides)
    last = Path(run.run_dir) / "checkpoints" / "last.pt"
    with run_threads():
        student = build_model(recipe.student.model_copy(update={"checkpoint": str(last)}))
        reference = load_file(teacher_predictions)["predictions"]
        loader = held_out_loader(lm_arm(run.arm).recipe, arm_overrides)
        test = evaluate_lm(student, loader, reference)
    return replace(run, test=test)


def train_lm_arm(
    arm_key: str,
    seed: int,
    overrides: Sequence[str],
    run_dir: str,
    teacher_predictions: str | None,
    run_report: bool = True,
) -> ArmRun:
    """Train one arm's recipe at ``seed`` into ``run_dir`` (a fresh directory) with one torch
    thread; with ``teacher_predictions``, then measure it (:func:`measure_lm_run`; without,
    its ``test`` is empty: the baseline trains while the teacher does)."""
    from torchkd.config import fit_recipe

    recipe = lm_recipe(lm_arm(arm_key).recipe, [*overrides, f"train.seed={seed}"])
    if Path(run_dir).exists():
        shutil.rmtree(run_dir)
    started = time.perf_counter()
    with run_threads():
        result = fit_recipe(recipe, run_dir, evaluate_test=False, report=run_report)
    run = ArmRun(
        arm=arm_key,
        seed=seed,
        test={},
        val_curve=[
            (record["step"], record["val"]["perplexity"])
            for record in result.history
            if "perplexity" in record.get("val", {})
        ],
        seconds=time.perf_counter() - started,
        run_dir=str(run_dir),
    )
    if teacher_predictions is None:
        return run
    return measure_lm_run(run, overrides, teacher_predictions)
