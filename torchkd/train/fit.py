"""The training engine's entry point: :func:`fit` trains a Distiller with the loop of
:mod:`torchkd.train.loop`, tests the final model and returns a :class:`FitResult`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from torchkd.train.checkpoint_layout import checkpoint_in_the_way
from torchkd.train.config import TrainConfig
from torchkd.train.evaluate import evaluate
from torchkd.train.loop import Trainer
from torchkd.train.results import FitResult

__all__ = ["fit"]


def fit(
    distiller: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable[Mapping[str, Any]],
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    test_loader: Iterable[Mapping[str, Any]] | None = None,
    resolved_config: Mapping[str, Any] | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train ``distiller`` for ``config.epochs`` epochs, evaluating every
    ``config.eval_every_epochs`` (and after the last) and checkpointing.

    ``fit`` does not reseed the global random generators: the shuffle order follows
    ``(config.seed, epoch)``, and everything else (initial weights, dropout, augmentation) draws
    from the generators as the caller left them. For a reproducible run seed once, before
    building the models, with :func:`torchkd.train.seed_everything` (as
    :func:`torchkd.config.fit_recipe` does).

    Args:
        distiller: a :class:`~torchkd.distiller.Distiller` (``build``, ``set_progress``,
            ``trainable_parameters``, ``student``, ``extras``, ``forward -> DistillOutput``).
        train_loader: a map-style :class:`~torch.utils.data.DataLoader` of dict batches
            (its length is needed for the schedule). Give it a ``generator`` (as
            :func:`torchkd.config.build_loaders` does): it is reseeded every epoch.
        val_loader: dict batches with labels, evaluated every ``eval_every_epochs`` epochs.
        config: the ``train:`` section.
        run_dir: where ``checkpoints/``, ``metrics.jsonl`` and ``tb/`` go (the recipe's
            ``config.yaml`` and ``report.md`` are written by the caller that owns them:
            :func:`torchkd.config.fit_recipe`, or :func:`torchkd.report.write_report`).
        resume: continue from ``run_dir/checkpoints/last.pt``. Without it, a run directory
            that already holds ``last.pt`` is refused (nothing is overwritten by accident).
        test_loader: evaluated once with the final model.
        resolved_config: the full resolved recipe, stored in every checkpoint (default:
            ``{"train": config}``).
        on_epoch_end: called with each epoch's record (``epoch``, ``val`` metrics, ...) once
            its checkpoints are written; an exception it raises stops training and
            propagates (how :mod:`torchkd.tune` prunes a trial).

    Returns:
        :class:`FitResult`.

    Raises:
        NonFiniteLossError: ``config.max_consecutive_nonfinite`` skipped steps in a row.
        CheckpointError: ``resume`` and ``last.pt`` is missing, truncated or corrupt.
        FileExistsError: not ``resume`` and the run directory holds a checkpoint.
        KeyboardInterrupt: re-raised after ``last.pt`` is saved (resume continues from the
            last optimizer step).
    """
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    if not resume and checkpoint_in_the_way(last_path):
        raise FileExistsError(
            f"{run_dir} already holds a checkpoint ({last_path}); pass resume=True to continue "
            "it, or use another run directory"
        )
    resolved = dict(resolved_config or {"train": config.model_dump(mode="json")})
    trainer = Trainer(distiller, train_loader, val_loader, config, run_dir, resolved)
    trainer.run(resume, on_epoch_end)
    test_metrics = None
    if test_loader is not None:
        with trainer.parallel.evaluation(distiller):
            test_metrics = evaluate(
                distiller,
                test_loader,
                device=trainer.device,
                amp=config.amp,
                processes=trainer.parallel,
            )
    progress = trainer.progress
    history = progress.history
    best = next((r["val"] for r in history if r["epoch"] == progress.best_epoch), {})
    best_path = trainer.parallel.checkpoint_path(run_dir / "checkpoints" / "best.pt")
    return FitResult(
        run_dir=run_dir,
        best_metrics=dict(best),
        best_epoch=progress.best_epoch,
        final_metrics=dict(history[-1]["val"]) if history else {},
        test_metrics=test_metrics,
        history=history,
        nonfinite_steps=progress.nonfinite_steps,
        last_checkpoint=trainer.parallel.checkpoint_path(last_path),
        best_checkpoint=best_path if best_path.exists() else None,
        metrics_path=run_dir / "metrics.jsonl",
    )
