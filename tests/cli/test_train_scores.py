"""``torchkd train`` says which checkpoint each score belongs to, and reports the test score of
``best.pt``, the checkpoint other recipes load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import torchkd.config
from torchkd import cli
from torchkd.config import build_from_recipe, load_recipe
from torchkd.config.run import score_best_checkpoint
from torchkd.train import FitResult, evaluate, fit, load_student_weights

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "mnist1d" / "baseline.yaml"
SHORT = ["train.epochs=2", "train.progress=false", "data.batch_size=1024"]


def test_best_checkpoint_is_tested_with_its_own_weights(tmp_path: Path) -> None:
    """With best.pt from another epoch than the final model, its test score is that of its own
    weights, and the final weights are back in the student afterwards."""
    recipe = load_recipe(RECIPE, [*SHORT, "train.keep_teacher_checkpoints_every=1"])
    built = build_from_recipe(recipe)
    loaders = built.loaders
    result = fit(
        built.distiller, loaders.train, loaders.val, built.train_config, tmp_path,
        test_loader=loaders.test,
    )  # fmt: skip
    epoch1 = tmp_path / "checkpoints" / "epoch_001.pt"
    as_if_best = dataclasses.replace(result, best_epoch=1, best_checkpoint=epoch1)
    scores = score_best_checkpoint(built, as_if_best)
    assert scores is not None and score_best_checkpoint(built, result) == result.test_metrics
    assert evaluate(built.distiller, loaders.test) == result.test_metrics  # restored
    student = built.distiller.student
    student.load_state_dict(load_student_weights(epoch1))
    assert evaluate(built.distiller, loaders.test) == scores != result.test_metrics


def _result(tmp_path: Path, best_epoch: int) -> FitResult:
    return FitResult(
        run_dir=tmp_path,
        best_metrics={"top1": 80.0},
        best_epoch=best_epoch,
        final_metrics={"top1": 79.0},
        test_metrics={"top1": 91.0},
        history=[{"epoch": epoch, "val": {}} for epoch in (1, 2, 3)],
        nonfinite_steps=0,
        last_checkpoint=tmp_path / "checkpoints" / "last.pt",
        best_checkpoint=tmp_path / "checkpoints" / "best.pt",
        metrics_path=tmp_path / "metrics.jsonl",
        best_test_metrics={"top1": 90.0} if best_epoch != 3 else {"top1": 91.0},
    )


@pytest.mark.parametrize("best_epoch", [2, 3])
def test_train_prints_each_score_with_its_checkpoint(
    best_epoch: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(torchkd.config, "fit_recipe", lambda *a, **k: _result(tmp_path, best_epoch))
    assert cli.main(["train", str(RECIPE), "--run-dir", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert f"best validation top-1: 80.00 % (epoch {best_epoch}, saved as checkpoints/best.pt" in (
        printed
    )
    best_score = "90.00" if best_epoch == 2 else "91.00"
    assert f"test top-1 of checkpoints/best.pt (epoch {best_epoch}): {best_score} %" in printed
    final = "test top-1 of the final model (checkpoints/last.pt, epoch 3): 91.00 %"
    assert (final in printed) == (best_epoch == 2)  # said once when they are the same weights
