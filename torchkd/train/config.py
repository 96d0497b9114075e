"""The ``train:`` section of a recipe: what :func:`torchkd.train.fit` needs besides the model
and the data (the engine owns its own settings; :mod:`torchkd.config` composes them into the
recipe schema).

Every section forbids unknown keys and validates values on assignment; the numeric types
refuse booleans (``lr: true`` is an error, not 1.0).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = [
    "Float",
    "Int",
    "LRScheduleConfig",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OptimizerConfig",
    "PositiveFloat",
    "PositiveInt",
    "Section",
    "TrainConfig",
]


def refuse_bool(expected: str) -> typing.Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return check


Float = Annotated[float, BeforeValidator(refuse_bool("a number"))]
Int = Annotated[int, BeforeValidator(refuse_bool("an integer"))]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class OptimizerConfig(Section):
    """``train.optimizer:``: ``sgd`` | ``adam`` | ``adamw`` over the student and extras.

    ``momentum`` and ``nesterov`` apply to SGD only.
    """

    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False


class LRScheduleConfig(Section):
    """``train.lr_schedule:``: linear warmup, then cosine decay, step decay or constant.

    Attributes:
        name: ``cosine`` (to ``min_lr`` at the end), ``step`` (× ``gamma`` at each of
            ``milestones``, given in epochs) or ``constant``.
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        milestones: epochs where ``step`` multiplies the rate by ``gamma``.
        gamma: the ``step`` factor.
        min_lr: the final rate of ``cosine``.
    """

    name: Literal["cosine", "step", "constant"] = "constant"
    warmup_epochs: NonNegativeFloat = 0.0
    milestones: list[PositiveInt] = []
    gamma: Annotated[Float, Field(gt=0, le=1)] = 0.1
    min_lr: NonNegativeFloat = 0.0

    @model_validator(mode="after")
    def _milestones_fit_the_schedule(self) -> LRScheduleConfig:
        if self.name == "step" and not self.milestones:
            raise ValueError("milestones: required (a list of epochs) when name is 'step'")
        if self.name != "step" and self.milestones:
            raise ValueError(f"milestones: only used when name is 'step', not {self.name!r}")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones: expected increasing epochs, got {self.milestones}")
        return self


class TrainConfig(Section):
    """``train:``: everything :func:`torchkd.train.fit` needs besides the model and data.

    Attributes:
        epochs: training epochs.
        optimizer: see :class:`OptimizerConfig`.
        lr_schedule: see :class:`LRScheduleConfig` (applied per optimizer step).
        grad_clip_norm: clip the global gradient norm to this value (``null``: no clipping).
        grad_accum_steps: micro-batches per optimizer step.
        amp: ``none``, ``bf16`` (autocast, CPU or CUDA) or ``fp16`` (CUDA only, with loss
            scaling).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds Python, NumPy and torch once, before the models are built (by
            :func:`torchkd.config.build_from_recipe`), and each epoch's shuffle order.
        max_consecutive_nonfinite: non-finite steps in a row (each skipped) before stopping.
        checkpoint_every_epochs: write ``checkpoints/last.pt`` every N epochs (and always
            after the last one and on Ctrl-C); ``best.pt`` is written whenever validation
            top-1 improves.
        keep_teacher_checkpoints_every: also keep ``checkpoints/epoch_XXX.pt`` every N epochs
            (candidates for teacher selection: an earlier teacher can be a better teacher).
        eval_every_epochs: evaluate on the validation set every N epochs (and always after
            the last). Only evaluated epochs get an epoch record (``metrics.jsonl``, history,
            ``on_epoch_end``) and can become ``best.pt``; ``last.pt`` follows
            ``checkpoint_every_epochs`` either way.
        log_every_steps: step records (JSONL, TensorBoard) every N optimizer steps.
        progress: show a tqdm bar (only on a terminal) and one summary line per epoch;
            without a terminal (logs, CI, nohup), step lines instead of the bar.
        progress_every_s: without a terminal, a step line (loss, terms, samples/s, ETA) at
            the first step record at least this many seconds after the previous line (0: at
            every step record, i.e. every ``log_every_steps`` steps).
        tensorboard: TensorBoard event files (``tb/``) beside ``metrics.jsonl``: ``null``
            (default) writes them when the ``tensorboard`` package is installed, ``true``
            requires it (``ImportError`` with ``pip install 'torchkd[log]'`` when missing),
            ``false`` never writes them.
        distributed: how processes launched by ``torchrun`` share the work
            (:mod:`torchkd.train.distributed`): ``auto`` (``ddp`` when launched with more than
            one process, else ``none``), ``none`` (one process only), ``ddp``
            (``DistributedDataParallel``: student and extras replicated, gradients averaged)
            or ``fsdp`` (FSDP2 ``fully_shard``: student and extras sharded). The data's
            ``batch_size`` is the global batch, split evenly across the processes.
        shard_teacher: under ``fsdp``, shard the frozen teachers too (each forward gathers
            their weights; for teachers that do not fit one device); otherwise every process
            holds a full copy of each teacher.
    """

    epochs: PositiveInt = 10
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig)
    grad_clip_norm: PositiveFloat | None = None
    grad_accum_steps: PositiveInt = 1
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    seed: NonNegativeInt = 0
    max_consecutive_nonfinite: PositiveInt = 5
    checkpoint_every_epochs: PositiveInt = 1
    keep_teacher_checkpoints_every: PositiveInt | None = None
    eval_every_epochs: PositiveInt = 1
    log_every_steps: PositiveInt = 10
    progress: bool = True
    progress_every_s: NonNegativeFloat = 30.0
    tensorboard: bool | None = None
    distributed: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    shard_teacher: bool = False

    @model_validator(mode="after")
    def _shard_teacher_needs_fsdp(self) -> TrainConfig:
        if self.shard_teacher and self.distributed != "fsdp":
            raise ValueError(
                f"shard_teacher: only used when distributed is 'fsdp', not {self.distributed!r}"
            )
        return self
