"""Training on several processes under ``torchrun``: DDP and FSDP2 around the student.

Launch ``torchrun --nproc-per-node N -m torchkd train RECIPE`` (or call
:func:`torchkd.train.fit` from a script launched the same way). :class:`Parallel` is the one
place the engine meets ``torch.distributed``:

- the process group comes from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``,
  ``MASTER_ADDR``, ...): gloo on CPU, NCCL on CUDA (one device per process, ``LOCAL_RANK``);
- ``train.distributed`` picks the wrapper: ``ddp`` (default with more than one process) or
  ``fsdp`` (FSDP2 ``fully_shard``). The student and everything trainable beside it (the
  Distiller's ``extras``: adapters, heads, "auto" weights, learned temperatures) are wrapped
  once, as one module whose forward is the Distiller's; the frozen teachers are never
  wrapped: every process holds a copy, or under ``fsdp`` with ``train.shard_teacher`` each
  teacher is sharded on its own for inference. FSDP shards the student (and a sharded
  teacher) per transformer block (:mod:`torchkd.train.fsdp`);
- the training batches: ``data.batch_size`` is the global batch; every process draws the same
  order and takes its contiguous share of each batch (:class:`~torchkd.data.BatchOrder` with
  ``num_replicas``), so N processes see exactly the batches one process would;
- buffers are not broadcast at every forward (``forward_sync_buffers=False``): stateful losses
  update their buffers identically on every process (CRD gathers its memory-bank updates), and
  the student's buffers (BatchNorm statistics) are copied from rank 0 before every evaluation
  and checkpoint;
- per-step values (loss, gradient norm, terms) are averaged over the processes before they
  are logged, and a step is skipped for a non-finite value on every process or on none;
- validation and test batches are shared out across the processes and their metrics computed
  from the sums and counts of all (``evaluate(..., processes=parallel)``);
- rank 0 alone writes logs, TensorBoard events, reports and ``.pt`` checkpoints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, DistributedSampler

from torchkd.data.batching import BatchOrder
from torchkd.lm.model import is_causal_lm
from torchkd.train.checkpoint import load_checkpoint, save_checkpoint
from torchkd.train.checkpoint_layout import sharded_path
from torchkd.train.fsdp import shard_blocks
from torchkd.train.rng import capture_rng_state, seed_everything
from torchkd.train.sharded import load_sharded, save_sharded

__all__ = [
    "Parallel",
    "SilentLogger",
    "TrainedPart",
    "end_process",
    "is_main_process",
    "process_description",
    "rank_seed",
    "record_failure",
    "resolve_mode",
]

Mode = Literal["none", "ddp", "fsdp"]


def _launched_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes files: rank 0 (or the only process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def process_description() -> str:
    """``" on rank R of N"`` under ``torchrun`` with several processes, else ``""``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f" on rank {os.environ.get('RANK', '0')} of {world}" if world > 1 else ""


def record_failure(error: BaseException) -> None:
    """Under ``torchrun``, record ``error`` as this process's failure: ``torchrun`` stops the
    other processes and names this one, with its message, as the root cause."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(error)


def end_process(code: int = 0) -> NoReturn:
    """Exit with ``code``; a process that joined a process group skips the interpreter's
    finalization (:func:`os._exit`, once its output is flushed).

    A gloo worker thread may still be releasing the tensors of the last collective when the
    main thread is done; if it reaches for the interpreter while it finalizes, the process
    aborts (SIGABRT, "terminate called without an active exception") after it has finished,
    and ``torchrun`` reports a crash instead of the success or the refusal (exit 2) it had.
    Call it only once files are closed (checkpoints are written atomically; the loop closes
    its logs).
    """
    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank`` in a run seeded with ``seed`` (rank 0 keeps ``seed``).

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) == rank_seed(7, 1) != rank_seed(7, 2)
        (7, True)
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)[0])


def resolve_mode(setting: str, world_size: int) -> Mode:
    """``train.distributed`` for ``world_size`` processes (``auto``: ``ddp`` or ``none``)."""
    if setting == "auto":
        return "ddp" if world_size > 1 else "none"
    if setting == "none" and world_size > 1:
        raise ValueError(
            f"train.distributed='none' but {world_size} processes were launched (WORLD_SIZE): "
            "each would train alone and write the same files; use 'ddp' or 'fsdp', or launch "
            "one process"
        )
    return setting  # type: ignore[return-value]


class TrainedPart(nn.Module):
    """The student and the extras as one module whose forward is the Distiller's: what DDP and
    FSDP wrap, in torchkd's loop and in ``DistillationTrainer``.

    The teachers are not submodules, so neither DDP nor FSDP sees them.
    """

    def __init__(self, distiller: nn.Module) -> None:
        super().__init__()
        self.student = distiller.student
        self.extras = distiller.extras
        object.__setattr__(self, "distiller", distiller)  # not registered: no teachers

    def forward(self, batch: Any) -> Any:
        return self.distiller(batch)


def _scalars(module: nn.Module) -> set[nn.Parameter]:
    return {param for param in module.parameters() if param.dim() == 0}


class Parallel:
    """How this process takes part in the run; every method is a no-op for one process.

    Args:
        mode: ``none``, ``ddp`` or ``fsdp``.
        device: the training device (a CUDA run uses ``cuda:LOCAL_RANK``).
        shard_teacher: under ``fsdp``, shard the teachers too.
    """

    def __init__(self, mode: Mode, device: torch.device, shard_teacher: bool = False) -> None:
        self.mode = mode
        self.shard_teacher = shard_teacher
        self.enabled = mode != "none"
        self.rank = dist.get_rank() if self.enabled else 0
        self.world_size = dist.get_world_size() if self.enabled else 1
        self.device = device
        self.wrapped: nn.Module | None = None
        self.replicated: list[nn.Parameter] = []  # FSDP: parameters kept whole on every rank
        self.sharded_teachers: list[nn.Module] = []  # FSDP with shard_teacher

    @classmethod
    def from_environment(
        cls, setting: str, device: torch.device, shard_teacher: bool = False
    ) -> Parallel:
        """Join (or create) the process group ``torchrun`` describes in the environment."""
        mode = resolve_mode(setting, _launched_world_size())
        if mode == "none":
            return cls(mode, device)
        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ:
                raise RuntimeError(
                    f"train.distributed={setting!r} needs a process group: launch with "
                    "`torchrun --nproc-per-node N ...` (or call "
                    "torch.distributed.init_process_group first)"
                )
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        return cls(mode, device, shard_teacher)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------- model
    def wrap(self, distiller: nn.Module) -> nn.Module:
        """The module to call for a training step: the Distiller itself, or its student and
        extras wrapped once in DDP / FSDP2 (after ``distiller.build``)."""
        if self.mode == "none":
            return distiller
        trainable = TrainedPart(distiller)
        if self.mode == "ddp":
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(
                trainable, device_ids=ids, forward_sync_buffers=False
            )
            return self.wrapped
        from torch.distributed.fsdp import fully_shard

        if self.shard_teacher:
            self.sharded_teachers = list(distiller.teachers)
            for teacher in self.sharded_teachers:
                shard_blocks(teacher, _scalars(teacher), keep_root_gathered=False)
        # FSDP shards no 0-d parameters ("auto" weights, learned temperatures): they stay
        # replicated and their gradients are averaged by sync_gradients
        scalars = _scalars(trainable)
        self.replicated = [param for param in scalars if param.requires_grad]
        # per transformer block; a unit of its own, as evaluation calls it directly; a causal
        # LM's output projection stays gathered for the fused losses that read it
        student = distiller.student
        shard_blocks(student, scalars, keep_root_gathered=is_causal_lm(student))
        self.wrapped = fully_shard(trainable, ignored_params=scalars)
        return self.wrapped

    @contextmanager
    def sync_gradients(self, enabled: bool) -> Iterator[None]:
        """Average gradients in this forward/backward only when ``enabled`` (the last
        micro-batch of an accumulated step); then release the sharded teachers' gathered
        weights (:meth:`release_teachers`)."""
        if enabled or self.wrapped is None:
            yield
            self._average_replicated_gradients()
        elif self.mode == "ddp":
            with self.wrapped.no_sync():
                yield
        else:
            self.wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.wrapped.set_requires_gradient_sync(True)
        self.release_teachers()

    def release_teachers(self) -> None:
        """Reshard each sharded teacher's own unit (its embeddings and output projection):
        FSDP2 keeps a root unit gathered after its forward (for the backward a student would
        run), and a teacher runs none. The fused losses read the teacher's output projection
        after its forward, so it is released once the backward is done."""
        for teacher in self.sharded_teachers:
            teacher.reshard()

    def _average_replicated_gradients(self) -> None:
        for param in self.replicated:
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.world_size

    def full_tensor(self, value: Tensor) -> Tensor:
        """A plain tensor of ``value`` (a sharded FSDP gradient norm is reduced)."""
        full = getattr(value, "full_tensor", None)
        return full() if callable(full) else value

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy ``module``'s buffers (BatchNorm statistics) from rank 0 to every process."""
        if not self.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    # ----------------------------------------------------------------- data
    def shard_loader(self, loader: DataLoader) -> DataLoader:
        """``loader`` with each batch split across the processes (see the module docstring).

        A loader of :func:`~torchkd.data.batch_loader` is resharded; a loader whose sampler is
        already a ``DistributedSampler`` is kept; any other loader is refused.
        """
        if not self.enabled:
            return loader
        sampler = loader.sampler
        if isinstance(sampler, DistributedSampler):
            return loader
        if not isinstance(sampler, BatchOrder):
            raise TypeError(
                f"a distributed run needs a train loader built by torchkd.data.batch_loader, "
                f"or one with a DistributedSampler; got a {type(sampler).__name__} sampler"
            )
        generator = loader.generator
        if generator is None and (sampler.shuffle or sampler.seeded):
            generator = torch.Generator()  # reseeded from (seed, epoch) by the trainer
        order = BatchOrder(
            sampler.num_samples,
            sampler.batch_size,
            shuffle=sampler.shuffle,
            generator=generator,
            drop_last=sampler.drop_last,
            seeded=sampler.seeded,
            num_replicas=self.world_size,
            rank=self.rank,
        )
        return DataLoader(
            loader.dataset,
            batch_size=None,
            sampler=order,
            generator=generator,
            num_workers=loader.num_workers,
        )

    # ----------------------------------------------------------------- values
    def mean(self, values: Tensor) -> Tensor:
        """``values`` averaged over the processes (non-finite on any -> non-finite)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def reducer(self) -> Callable[[Tensor], Tensor] | None:
        """:meth:`mean` in a distributed run, else ``None`` (nothing to reduce)."""
        return self.mean if self.enabled else None

    def seed_process(self, seed: int) -> None:
        """Seed this process's generators with :func:`rank_seed` (rank 0 keeps the run's
        stream, so dropout and sampling draws differ across processes but not from a
        one-process run on rank 0)."""
        if self.rank:
            seed_everything(rank_seed(seed, self.rank))

    @contextmanager
    def evaluation(self, distiller: nn.Module) -> Iterator[None]:
        """Evaluate a replicated model: rank 0's buffers everywhere; under FSDP the extras
        (held by the root unit) gathered for the direct calls evaluation makes."""
        self.sync_buffers(distiller.student)
        if self.mode != "fsdp":
            yield
            return
        self.wrapped.unshard()
        try:
            yield
        finally:
            self.wrapped.reshard()
            distiller.student.reshard()  # its own unit, kept gathered after a causal LM's forward
            self.release_teachers()

    # ----------------------------------------------------------------- checkpoints
    @property
    def sharded(self) -> bool:
        """Whether checkpoints are ``torch.distributed.checkpoint`` directories (FSDP)."""
        return self.mode == "fsdp"

    def checkpoint_path(self, path: Path) -> Path:
        """``path`` (``name.pt``) as this run writes it: ``name.dcp`` under FSDP."""
        return sharded_path(path) if self.sharded else path

    def rank_rng(self, epoch_rng: dict[str, Any], step_rng: dict[str, Any]) -> dict[str, Any]:
        """Under DDP, every process's generator states for the ``.pt`` checkpoint (a
        collective: every process calls it) as ``{"rank_rng": [[epoch_rng, rng], ...]}``."""
        if self.mode != "ddp":
            return {}
        return {"rank_rng": self.gather_objects([epoch_rng, step_rng])}

    def save(self, checkpoint: dict[str, Any], path: Path, optimizer: Optimizer) -> Path:
        """Write ``checkpoint`` (every process calls this): rank 0 writes the ``.pt`` file under
        DDP; under FSDP see :func:`torchkd.train.sharded.save_sharded`."""
        if self.sharded:
            return save_sharded(checkpoint, self.checkpoint_path(path), self.wrapped, optimizer)
        if self.is_main:
            save_checkpoint(checkpoint, path)
        self.barrier()  # the file is complete before any process goes on
        return path

    def load(self, path: Path, optimizer: Optimizer) -> dict[str, Any]:
        """The checkpoint at ``path`` with this process's generator states as ``rng`` and
        ``epoch_rng``; under FSDP the model and optimizer are loaded in place."""
        if self.sharded:
            return load_sharded(self.checkpoint_path(path), self.wrapped, optimizer, self.rank)
        checkpoint = load_checkpoint(path)
        states = checkpoint.pop("rank_rng", None)
        if self.enabled and states is not None and len(states) == self.world_size:
            checkpoint["epoch_rng"], checkpoint["rng"] = states[self.rank]
        elif self.rank:  # saved on another number of processes: a fresh stream per rank
            self.seed_process(checkpoint["progress"]["step"])
            checkpoint["epoch_rng"] = checkpoint["rng"] = capture_rng_state()
        return checkpoint


class SilentLogger:
    """What the processes other than rank 0 log with: nothing."""

    def log_step(self, record: dict[str, Any]) -> None:
        del record

    def log_epoch(self, record: dict[str, Any]) -> None:
        del record

    def close(self) -> None:
        pass
