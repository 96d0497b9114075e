"""Optimizers and the per-step learning-rate schedule of the trainer."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from torchkd.train.config import LRScheduleConfig, OptimizerConfig


def build_optimizer(
    parameters: Iterable[nn.Parameter], config: OptimizerConfig
) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over ``parameters`` as ``config`` says.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> type(build_optimizer(layer.parameters(), OptimizerConfig(name="sgd"))).__name__
        'SGD'
    """
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("no trainable parameters: the student and extras are all frozen")
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
    optimizer_class = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return optimizer_class(parameters, lr=config.lr, weight_decay=config.weight_decay)


class LRSchedule:
    r"""The learning rate of every optimizer step: linear warmup, then a decay rule.

    With :math:`W` warmup steps, :math:`S` total steps and base rate :math:`\eta_0`, step
    :math:`s` (0-based) uses

    .. math::
        \eta_s = \eta_0 \cdot \frac{s + 1}{W} \quad (s < W), \qquad
        \eta_s = \eta_{\min} + (\eta_0 - \eta_{\min})\,
        \tfrac12\bigl(1 + \cos(\pi\,\tfrac{s - W}{S - W})\bigr) \quad \text{(cosine)},

    ``step``: :math:`\eta_0 \gamma^{k}` with :math:`k` the number of milestones (given in
    epochs) already reached; ``constant``: :math:`\eta_0`. Cosine reaches :math:`\eta_{\min}`
    after the last step (Loshchilov & Hutter, "SGDR", ICLR 2017; warmup: Goyal et al., 2017).

    The schedule writes the rate into the optimizer's parameter groups; its whole state is the
    base rates, so it is saved with the checkpoint and the step comes from the trainer.

    Example:
        >>> config = LRScheduleConfig(name="cosine", warmup_epochs=1)
        >>> optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        >>> schedule = LRSchedule(optimizer, config, steps_per_epoch=2, total_steps=6)
        >>> [round(schedule.factor(step), 3) for step in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: LRScheduleConfig,
        steps_per_epoch: int,
        total_steps: int,
    ) -> None:
        if steps_per_epoch <= 0 or total_steps <= 0:
            raise ValueError(
                f"steps_per_epoch and total_steps must be positive, got {steps_per_epoch}, "
                f"{total_steps}"
            )
        self.optimizer = optimizer
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.milestone_steps = [epoch * steps_per_epoch for epoch in config.milestones]
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor(self, step: int) -> float:
        """The decay multiplier at optimizer step ``step`` (0-based).

        During warmup it multiplies the base rate; afterwards it multiplies
        ``base_lr - min_lr`` (``min_lr`` is used by the cosine rule only).
        """
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.config.name == "step":
            reached = sum(step >= milestone for milestone in self.milestone_steps)
            return self.config.gamma**reached
        if self.config.name == "cosine":
            decay_steps = max(self.total_steps - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / decay_steps, 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def rates(self, step: int) -> list[float]:
        """Every parameter group's rate at ``step``."""
        factor = self.factor(step)
        warming_up = step < self.warmup_steps
        floor = self.config.min_lr if self.config.name == "cosine" and not warming_up else 0.0
        return [floor + (base_lr - floor) * factor for base_lr in self.base_lrs]

    def rate(self, step: int) -> float:
        """The first parameter group's rate at ``step``."""
        return self.rates(step)[0]

    def apply(self, step: int) -> float:
        """Set every group's rate for ``step``; returns the first group's rate."""
        rates = self.rates(step)
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        return rates[0]

    def state_dict(self) -> dict[str, list[float]]:
        """The base rates (everything else follows from the config and the step)."""
        return {"base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restore the base rates saved by :meth:`state_dict`."""
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"the checkpoint has {len(state['base_lrs'])} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.base_lrs = list(state["base_lrs"])


def extension_notice(schedule: LRSchedule, epochs_before: int | None, step: int) -> str | None:
    """What resuming with more epochs does to the learning rate (``None``: nothing changed).

    ``schedule`` is planned over the new ``train.epochs`` (whole epochs of its
    ``steps_per_epoch``); ``epochs_before`` is the checkpoint's ``train.epochs``. From the
    resume ``step`` on, every step uses the rate a run planned for the new total uses at that
    step (a cosine that had decayed to ``min_lr`` rises back to that curve); the notice gives
    that rate and the one the old plan had.

    Example:
        >>> config = LRScheduleConfig(name="cosine")
        >>> optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
        >>> schedule = LRSchedule(optimizer, config, steps_per_epoch=2, total_steps=8)
        >>> extension_notice(schedule, epochs_before=2, step=4).split("; ")[1]
        'step 4 uses 0.5 (the 2-epoch plan: 0)'
        >>> extension_notice(schedule, epochs_before=4, step=4) is None
        True
    """
    epochs = schedule.total_steps // schedule.steps_per_epoch
    if epochs_before is None or epochs_before == epochs:
        return None
    planned = LRSchedule(
        schedule.optimizer,
        schedule.config,
        schedule.steps_per_epoch,
        epochs_before * schedule.steps_per_epoch,
    )
    planned.base_lrs = schedule.base_lrs
    was, now = planned.rate(step), schedule.rate(step)
    return (
        f"resuming with train.epochs {epochs_before} -> {epochs}: the learning-rate "
        f"schedule is re-planned over {epochs} epochs; step {step} uses "
        f"{now:.3g} (the {epochs_before}-epoch plan: {was:.3g})"
    )
