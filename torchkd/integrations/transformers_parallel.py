""":class:`~torchkd.integrations.transformers.DistillationTrainer` on several processes.

Launched with ``torchrun --nproc-per-node N`` or ``accelerate launch``, ``Trainer`` runs
DistributedDataParallel through accelerate. What changes for distillation:

- **The wrapped module.** ``Trainer`` would hand its ``model`` (the student) to accelerate. The
  Distiller calls the student itself, not a wrapper, so DDP would average no gradient, and the
  terms' trainable parts (adapters, learned weights and temperatures) would not be in it.
  Instead accelerate wraps the Distiller's trainable part (the student and the extras as one
  module whose forward is the Distiller's, as in torchkd's own engine,
  :mod:`torchkd.train.distributed`); the training step calls that wrapper. The teacher is not
  a submodule of it: never in DDP's buckets, never broadcast, without gradients. ``trainer.model``
  stays the student, which ``save_model`` and the checkpoints save. (On one process the same
  module is what accelerate prepares, so mixed precision autocasts the Distiller's whole
  forward, as torchkd's own loop does, and gradient clipping covers the extras, on one process
  as on several.)
- **Tokens.** With ``average_tokens_across_devices`` (``Trainer``'s default) the step's valid
  tokens ``N`` are summed over the ``W`` processes and each micro-batch's token loss is divided
  by ``N / (G W)`` (:class:`~torchkd.lm.tokens.TokenNormalizer`); DDP averages the processes'
  gradients, so the step's gradient is that of one process holding the whole global batch.
  Without it each process normalizes by its own tokens (``W = 1`` in the divisor) and the
  processes' per-process means are averaged, as ``Trainer`` does.
- **Logs.** The terms logged are averaged over the processes, as ``Trainer`` averages ``loss``.

Refused, with the reason: ``nn.DataParallel`` (several GPUs in one process), DeepSpeed, FSDP,
and tensor / context / sequence parallelism (see :func:`refuse_unsupported_parallelism`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "mean_over_processes",
    "refuse_unsupported_parallelism",
    "token_processes",
    "total_over_processes",
]

_FSDP_REFUSED = (
    "DistillationTrainer does not run under FSDP (fsdp=/fsdp_config=, or an accelerate FSDP "
    "config): Trainer then replaces trainer.model by the sharded module and saves it through "
    "accelerate's FSDP state-dict helpers, so the sharded unit would have to be the student "
    "alone (the extras and the Distiller's forward left outside the sharding) or the saved "
    "checkpoint would not be the student's; accelerate also shards only on GPU backends, so "
    "it could not be tested on gloo. Use DDP (torchrun or accelerate launch without FSDP), or "
    "torchkd's own engine with train.distributed=fsdp for a student that does not fit one device"
)


def refuse_unsupported_parallelism(trainer: Any) -> None:
    """Raise a ``ValueError`` naming the setting when ``trainer`` (a ``Trainer`` after its
    ``__init__``) would run in a way the Distiller does not support; one process, or DDP over
    several, passes."""
    args = trainer.args
    if args.n_gpu > 1:
        raise ValueError(
            f"DistillationTrainer does not run nn.DataParallel (n_gpu={args.n_gpu} devices in "
            "one process): launch one process per device with torchrun or accelerate launch "
            "(DistributedDataParallel), or set CUDA_VISIBLE_DEVICES to one device"
        )
    if trainer.is_deepspeed_enabled:
        raise ValueError(
            "DistillationTrainer does not run under DeepSpeed (deepspeed=): DeepSpeed's engine "
            "would wrap the student alone, outside the Distiller's forward; use DDP (torchrun "
            "or accelerate launch without DeepSpeed)"
        )
    if trainer.is_fsdp_enabled or args.fsdp:
        raise ValueError(_FSDP_REFUSED)
    split = {
        "tensor": trainer.get_tp_size(),
        "context": trainer.get_cp_size(),
        "sequence": trainer.get_sp_size(),
    }
    if any(size > 1 for size in split.values()):
        sizes = ", ".join(f"{kind}={size}" for kind, size in split.items())
        raise ValueError(
            f"DistillationTrainer does not run tensor, context or sequence parallelism "
            f"(parallelism_config: {sizes}): its terms read whole sequences and whole layers "
            "on each process; use data parallelism (DDP) only"
        )


def token_processes(args: Any) -> int:
    """``W`` of the token divisor ``N / (G W)``: the processes whose tokens ``N`` counts (all
    of them with ``average_tokens_across_devices``, else this one)."""
    return args.world_size if args.average_tokens_across_devices else 1


def total_over_processes(trainer: Any, count: Tensor) -> Tensor:
    """``count`` (this process's valid tokens, a 0-d tensor) summed over the processes that
    :func:`token_processes` counts (a collective: every process calls it at every step)."""
    if token_processes(trainer.args) == 1:
        return count
    return trainer.accelerator.gather(count).sum()


def mean_over_processes(trainer: Any, values: dict[str, Tensor]) -> dict[str, float]:
    """``values`` (0-d tensors, the same names on every process) averaged over the processes
    (a collective under several processes)."""
    if not values:
        return {}
    stacked = torch.stack([value.detach().to(trainer.args.device) for value in values.values()])
    if trainer.args.world_size > 1:
        stacked = trainer.accelerator.reduce(stacked, reduction="mean")
    return dict(zip(values, stacked.tolist(), strict=True))
