"""The training loop: :func:`fit` trains a Distiller, evaluates and checkpoints.

One optimizer step, top to bottom: the step's ``grad_accum_steps`` micro-batches are drawn and
each passed through ``distiller.prepare(batch, step)`` (on-policy sampling, when configured);
for token labels (``[B, L]``) each gets the step's token normalizer; then for each,
``distiller.set_progress(step, total_steps)``, the forward pass under autocast (bf16, or fp16
with a ``GradScaler`` on CUDA) and ``backward`` of ``loss / group_size``; then the gradient
norm is measured (and clipped to ``grad_clip_norm``). If the loss or the norm is not finite
the update is skipped and counted; ``max_consecutive_nonfinite`` skips in a row stop training
with :class:`NonFiniteLossError` naming the terms that went non-finite. The learning rate of
each step comes from :class:`~torchkd.train.optim.LRSchedule`.

Token terms are normalized by the step's tokens, not each micro-batch's: with ``N`` the valid
tokens (label != -100 and ``attention_mask`` 1, :func:`torchkd.lm.read_labels`) of all the
step's micro-batches on all processes, ``G`` micro-batches and ``W`` processes, every
micro-batch carries ``batch["token_normalizer"] = TokenNormalizer(N, G, W)``
(:class:`torchkd.lm.TokenNormalizer`). A token term divides its summed per-token loss by its
``divisor`` ``N / (G W)`` (the fused ``hidden_states`` losses, and the logit terms on token
logits, :mod:`torchkd.calls.tokens`); then by ``G`` (above), summed over micro-batches and
averaged over processes (DDP), the step's summed token loss is divided by ``N``: the gradient
of the one large batch, however unevenly the valid tokens fall. Sample-level terms average
within each micro-batch, as does every term in a step with no valid token.

Resuming is exact: each epoch's shuffle order is derived from ``(seed, epoch)``, and a
checkpoint stores every random generator's state at the last optimizer step (and at the start
of its epoch), so a run that is stopped and resumed produces the same weights as one that was
not (bit for bit on CPU).

Keeping the per-step cost low: the random state is captured in full only when a checkpoint is
written (each optimizer step keeps just a copy of torch's generator state, a few microseconds).
Ctrl-C only sets a flag (the handler is installed once per :func:`fit`; a second Ctrl-C
interrupts at once), and training stops at the next step boundary, where every generator is
in its step-boundary state. A ``KeyboardInterrupt`` raised inside a step (a second Ctrl-C, or
one raised by user code) rolls torch's generators back to the last step boundary; Python's
and NumPy's generators are saved as they are then (exact unless that step drew from them).
Step values (loss, gradient norm, terms) stay on the device and are read once per logged
step; each step checks finiteness with one fused test of ``loss + grad_norm`` and names the
non-finite terms only when it fails.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from torchkd._files import remove_stale_temporaries
from torchkd.batch import to_device
from torchkd.lm.tokens import (
    TOKEN_NORMALIZER,
    TokenNormalizer,
    attention_mask,
    count_valid_tokens,
    is_token_labels,
    read_labels,
)
from torchkd.train.checkpoint import CheckpointError, check_fits, save_checkpoint
from torchkd.train.checkpoint_layout import due_checkpoints
from torchkd.train.config import TrainConfig
from torchkd.train.device import check_amp, device_rng_state, resolve_device
from torchkd.train.distributed import Parallel, SilentLogger
from torchkd.train.evaluate import autocast_context, evaluate
from torchkd.train.logging import RunLogger, StepLines, progress_bar, step_record, term_texts
from torchkd.train.optim import LRSchedule, build_optimizer, extension_notice
from torchkd.train.results import NonFiniteLossError
from torchkd.train.rng import (
    capture_rng_state,
    restore_rng_state,
    seed_epoch_order,
)
from torchkd.train.state import InterruptFlag, Progress, StepGroup, StepSums

__all__ = ["Trainer"]


class Trainer:
    """One training run: :meth:`run` is the whole loop, each other method one stage of it.

    Built by :func:`fit`; all run state (progress, random-generator snapshots, optimizer,
    schedule, sums) lives on the instance and only its methods change it.
    """

    def __init__(
        self,
        distiller: nn.Module,
        train_loader: DataLoader,
        val_loader: Iterable[Mapping[str, Any]],
        config: TrainConfig,
        run_dir: Path,
        resolved_config: dict[str, Any],
    ) -> None:
        self.distiller = distiller
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.resolved_config = resolved_config
        self.device = resolve_device(config.device)
        check_amp(config.amp, self.device)
        # torchrun: process group, this process's device and share of each batch
        self.parallel = Parallel.from_environment(
            config.distributed, self.device, config.shard_teacher
        )
        self.device = self.parallel.device
        self.train_loader = train_loader = self.parallel.shard_loader(train_loader)
        num_batches = len(train_loader)
        if num_batches == 0:
            raise ValueError("train_loader yields no batches")
        self.steps_per_epoch = math.ceil(num_batches / config.grad_accum_steps)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.progress = Progress(num_batches=num_batches)
        self.optimizer: torch.optim.Optimizer
        self.schedule: LRSchedule
        self.scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" else None
        self.epoch_rng: dict[str, Any] = {}
        self.step_rng: dict[str, Any] = {}
        self.resume_rng: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.boundary_rng = device_rng_state(self.device)
        self.interrupts = InterruptFlag()
        self.window = StepSums()
        self.epoch_sums = StepSums()
        self.last_weights: dict[str, float] = {}

    def run(self, resume: bool, on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
        """Train (or resume) to ``config.epochs``, evaluating and checkpointing as configured."""
        self._setup(resume)
        progress = self.progress
        self.step_lines = StepLines(
            self.total_steps,
            progress.step,
            enabled=self.config.progress and self.parallel.is_main,
            every_s=self.config.progress_every_s,
        )
        logger = (
            RunLogger(
                self.run_dir,
                resume_step=progress.step if resume else None,
                resume_epoch=progress.epoch if resume else None,
                tensorboard=self.config.tensorboard,
            )
            if self.parallel.is_main
            else SilentLogger()
        )
        try:
            with self.interrupts.installed():
                for epoch in range(progress.epoch, self.config.epochs):
                    evaluated = self._run_epoch(epoch, logger)
                    if evaluated and on_epoch_end is not None:
                        on_epoch_end(progress.history[-1])
        except KeyboardInterrupt:
            if self.parallel.enabled:  # torchrun stops every process: resume from last.pt
                raise
            self._capture_interrupted_rng()
            path = self._save("last.pt")
            print(f"\ninterrupted: saved {path}; resume to continue", file=sys.stderr)
            raise
        finally:
            logger.close()

    # ------------------------------------------------------------------ setup
    def _setup(self, resume: bool) -> None:
        """Build extras and the optimizer; restore a checkpoint when resuming."""
        self.distiller.to(self.device)
        first_batch = to_device(next(iter(self.train_loader)), self.device)
        self.distiller.build(first_batch)
        self.distiller.to(self.device)
        self.model = self.parallel.wrap(self.distiller)  # DDP / FSDP2, or the Distiller
        self.trainable = list(self.distiller.trainable_parameters())
        self.optimizer = build_optimizer(self.trainable, self.config.optimizer)
        self.schedule = LRSchedule(
            self.optimizer, self.config.lr_schedule, self.steps_per_epoch, self.total_steps
        )
        if resume:
            remove_stale_temporaries(self.checkpoint_dir)  # left by writes that were killed
            self._restore(self.checkpoint_dir / "last.pt")
        else:
            self.parallel.seed_process(self.config.seed)
            self.epoch_rng = self.step_rng = capture_rng_state()
        self.boundary_rng = device_rng_state(self.device)

    def _restore(self, path: Path) -> None:
        path = self.parallel.checkpoint_path(path)  # FSDP: the last.dcp directory
        if not path.exists():
            raise CheckpointError(f"cannot resume: {path}: no such checkpoint file")
        checkpoint = self.parallel.load(path, self.optimizer)  # FSDP: loads model, optimizer
        if not self.parallel.sharded:
            for name, module in (
                ("student", self.distiller.student),
                ("extras", self.distiller.extras),
            ):
                check_fits(path, name, module, checkpoint[name])
            self.distiller.student.load_state_dict(checkpoint["student"])
            self.distiller.extras.load_state_dict(checkpoint["extras"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["lr_schedule"])
        if self.scaler is not None and checkpoint.get("scaler") is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.progress = Progress.resumed(
            checkpoint["progress"], path, self.progress.num_batches, self.config.epochs
        )
        before = checkpoint.get("config", {}).get("train", {}).get("epochs")
        notice = extension_notice(self.schedule, before, self.progress.step)
        if notice is not None and self.config.progress:
            print(notice, file=sys.stderr)  # the schedule is re-planned over the new total
        self.epoch_rng, self.step_rng = checkpoint["epoch_rng"], checkpoint["rng"]
        self.resume_rng = (checkpoint["epoch_rng"], checkpoint["rng"])
        restore_rng_state(checkpoint["rng"])

    # ------------------------------------------------------------------ checkpoints
    def _capture_interrupted_rng(self) -> None:
        """Set ``step_rng`` to the state at the last step boundary (see the module docstring)."""
        state = capture_rng_state()
        state.update(self.boundary_rng)
        self.step_rng = state

    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (see :mod:`torchkd.train.checkpoint`)."""
        return {
            "student": self.distiller.student.state_dict(),
            "extras": self.distiller.extras.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.schedule.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": self.step_rng,
            "epoch_rng": self.epoch_rng,
            "progress": asdict(self.progress),
            "config": self.resolved_config,
            **self.parallel.rank_rng(self.epoch_rng, self.step_rng),
        }

    def _save(self, name: str, checkpoint: dict[str, Any] | None = None) -> Path:
        checkpoint = checkpoint or self._checkpoint()
        if self.parallel.enabled:  # rank 0 writes .pt; FSDP: every rank its shards
            return self.parallel.save(checkpoint, self.checkpoint_dir / name, self.optimizer)
        return save_checkpoint(checkpoint, self.checkpoint_dir / name)

    # ------------------------------------------------------------------ one epoch
    def _train_epoch(self, epoch: int, logger: RunLogger) -> None:
        """Train the batches of ``epoch`` not yet trained (all of them unless resuming)."""
        config, progress = self.config, self.progress
        if self.resume_rng is not None:
            restore_rng_state(self.resume_rng[0])
        self.epoch_rng = capture_rng_state()
        seed_epoch_order(self.train_loader, config.seed, epoch)
        batches = iter(self.train_loader)
        for _ in range(progress.batches_done):
            next(batches)
        if self.resume_rng is not None:
            restore_rng_state(self.resume_rng[1])
            self.resume_rng = None
        if progress.batches_done == 0:
            progress.epoch_totals = {}
        self.epoch_sums = StepSums.resumed(progress.epoch_totals)
        self.boundary_rng = device_rng_state(self.device)
        self.distiller.train()
        self.window = StepSums()
        window_start = time.perf_counter()
        description = f"epoch {epoch + 1}/{config.epochs}"
        bar = progress_bar(
            progress.num_batches,
            description=description,
            enabled=config.progress and self.parallel.is_main,
            initial=progress.batches_done,
        )
        accum = config.grad_accum_steps
        try:
            while progress.batches_done < progress.num_batches:
                group_size = min(accum, progress.num_batches - progress.batches_done)
                group = self._accumulate(batches, group_size)
                outcome = self._update(group)
                progress.batches_done += group_size
                progress.step += 1
                self.boundary_rng = device_rng_state(self.device)
                if outcome is not None:
                    values, names = outcome
                    self.window.add(values, names, group.samples)
                    self.epoch_sums.add(values, names, group.samples)
                    self.last_weights = group.weights()
                bar.update(group_size)
                if progress.step % config.log_every_steps == 0 and self.window.steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    record = step_record(
                        epoch=epoch + 1,
                        step=progress.step,
                        lr=self.optimizer.param_groups[0]["lr"],
                        means=self.window.means(),
                        weights=self.last_weights,
                        samples_per_s=self.window.samples / elapsed,
                        nonfinite_steps=progress.nonfinite_steps,
                        loss_scale=None if self.scaler is None else self.scaler.get_scale(),
                    )
                    logger.log_step(record)
                    postfix = {"loss": f"{record['loss']:.4g}", **term_texts(record)}
                    bar.set_postfix(postfix | {"samples/s": f"{record['samples_per_s']:.0f}"})
                    self.step_lines.show(description, record)
                    self.window, window_start = StepSums(), time.perf_counter()
                self.interrupts.check()
        finally:
            bar.close()
            progress.epoch_totals = self.epoch_sums.summary()

    def _accumulate(self, batches: Iterator[Mapping[str, Any]], group_size: int) -> StepGroup:
        """Forward and backward ``group_size`` micro-batches; gradients add up."""
        self.schedule.apply(self.progress.step)
        group = StepGroup(size=group_size, reduce=self.parallel.reducer)
        step = self.progress.step
        micro_batches = [
            dict(self.distiller.prepare(to_device(next(batches), self.device), step))
            for _ in range(group_size)
        ]
        self._set_token_normalizer(micro_batches)
        for index, batch in enumerate(micro_batches):
            self.distiller.set_progress(step, self.total_steps)
            with self.parallel.sync_gradients(index == group_size - 1):
                with autocast_context(self.device, self.config.amp):
                    output = self.model(batch)
                scaled = output.loss if group_size == 1 else output.loss / group_size
                (scaled if self.scaler is None else self.scaler.scale(scaled)).backward()
            group.add(output)
        return group

    def _set_token_normalizer(self, micro_batches: list[dict[str, Any]]) -> None:
        """Give micro-batches with token labels the step's :class:`TokenNormalizer` (the valid
        tokens of all of them on all processes; see the module docstring)."""
        labels = [batch.get(self.distiller.labels_key) for batch in micro_batches]
        if not all(is_token_labels(value) for value in labels):
            return
        masks = [attention_mask(batch.get(self.distiller.inputs_key)) for batch in micro_batches]
        local = sum(
            count_valid_tokens(read_labels(value, mask))
            for value, mask in zip(labels, masks, strict=True)
        )
        count = torch.tensor(local, dtype=torch.float64, device=self.device)  # exact to 2**53
        tokens = round(float(self.parallel.mean(count)) * self.parallel.world_size)
        if tokens == 0:
            return
        normalizer = TokenNormalizer(tokens, len(micro_batches), self.parallel.world_size)
        for batch in micro_batches:
            batch[TOKEN_NORMALIZER] = normalizer

    def _update(self, group: StepGroup) -> tuple[Tensor, list[str]] | None:
        """Measure (and clip) the gradient, then step, or skip a non-finite step.

        Returns the step's values on the device (``[loss, grad_norm, *terms]``) and their
        names, or ``None`` when no update happened: a non-finite loss or gradient (counted),
        or an fp16 gradient overflow (the ``GradScaler`` lowers its scale; not counted, as that
        is how loss scaling calibrates itself).
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.trainable if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        grad_norm = self.parallel.full_tensor(grad_norm)  # FSDP: the norm of all shards
        overflow = False
        if not group.all_finite(grad_norm):
            loss, norm, terms = group.host_values(grad_norm)
            overflow = self.scaler is not None and math.isfinite(loss)
            if not overflow:
                self._skip(terms, loss, norm)
                return None
        self.progress.consecutive_nonfinite, self.progress.nonfinite_terms = 0, []
        if self.config.grad_clip_norm is not None and not overflow:
            torch.nn.utils.clip_grads_with_norm_(grads, self.config.grad_clip_norm, grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the update itself on overflow
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if overflow:
            return None
        return group.values(grad_norm)

    def _skip(self, terms: dict[str, float], loss: float, norm: float) -> None:
        progress = self.progress
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
        progress.count_nonfinite(terms)
        if progress.consecutive_nonfinite < self.config.max_consecutive_nonfinite:
            return
        raise NonFiniteLossError.after(
            progress.consecutive_nonfinite,
            progress.step,
            self.config.max_consecutive_nonfinite,
            progress.nonfinite_terms,
            loss,
            norm,
        )

    def _run_epoch(self, epoch: int, logger: RunLogger) -> bool:
        """Train one epoch, evaluate (when due), log, and write the checkpoints due.

        Returns whether the epoch was evaluated (and got an epoch record).
        """
        config, progress = self.config, self.progress
        started = time.perf_counter()
        samples_before = progress.epoch_totals.get("samples", 0.0) if progress.batches_done else 0.0
        self._train_epoch(epoch, logger)
        due = epoch + 1 == config.epochs or (epoch + 1) % config.eval_every_epochs == 0
        record = self._epoch_record(epoch, started, samples_before) if due else None
        # Ctrl-C only sets a flag (checked below), so these updates commit whole; an exception
        # raised before this point re-runs the evaluation on resume.
        improved = progress.finish_epoch(epoch, record)
        self.epoch_rng = self.step_rng = capture_rng_state()
        self.boundary_rng = device_rng_state(self.device)
        if record is not None:
            logger.log_epoch(record)
        if record is not None and config.progress and self.parallel.is_main:
            summary = ", ".join(f"{k}={v:.4g}" for k, v in record["val"].items() if k != "samples")
            print(f"epoch {epoch + 1}/{config.epochs}: {summary}", file=sys.stderr)
        self._save_due(epoch, self._checkpoint(), improved=improved)
        self.interrupts.check()
        return record is not None

    def _epoch_record(self, epoch: int, started: float, samples_before: float) -> dict[str, Any]:
        """Evaluate; the epoch's record, timed from ``started`` (``samples_before``: the samples
        trained before a resume inside the epoch)."""
        with self.parallel.evaluation(self.distiller):
            val_metrics = evaluate(
                self.distiller,
                self.val_loader,
                device=self.device,
                amp=self.config.amp,
                with_terms=True,
                processes=self.parallel,  # each process its share of the batches
            )
        elapsed = time.perf_counter() - started
        samples = self.progress.epoch_totals.get("samples", 0.0) - samples_before
        return {
            "epoch": epoch + 1,
            "step": self.progress.step,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": elapsed,
            "samples_per_s": samples / max(elapsed, 1e-9),
            "nonfinite_steps": self.progress.nonfinite_steps,
            "train": self.epoch_sums.means(),
            "val": val_metrics,
        }

    def _save_due(self, epoch: int, checkpoint: dict[str, Any], improved: bool) -> None:
        """Write the checkpoints due after ``epoch`` (0-based)."""
        config = self.config
        every, keep_every = config.checkpoint_every_epochs, config.keep_teacher_checkpoints_every
        for name in due_checkpoints(epoch + 1, config.epochs, every, keep_every, improved):
            self._save(name, checkpoint)
