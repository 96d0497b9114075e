"""Schedules for α, T and loss weights, and a learned, adversarial temperature (CTKD).

A schedule is a callable ``(step, total_steps) -> float``. Every built-in schedule is a small
frozen dataclass that works on *normalized time*

.. math::

    t = \\frac{\\text{step}}{\\text{total\\_steps}} \\in [0, 1],

so a schedule means the same thing for a 100-step and a 100 000-step run. Only :class:`Warmup`
counts raw steps (``warmup_steps``), because a warmup is usually sized in optimizer steps.

Steps are checked, never clamped: ``total_steps`` must be ``>= 1`` and ``0 <= step <=
total_steps`` (``step == total_steps`` is the end of training, ``t = 1``). A step past the end
raises ``ValueError``: it almost always means the caller's ``total_steps`` is wrong.

``create(name, **kwargs)`` builds a schedule by name (``available()`` lists the names) and
``as_schedule`` turns a plain number into a :class:`Constant`.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from torchkd.losses._common import check_pair

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "LearnableTemperature",
    "Linear",
    "Schedule",
    "Step",
    "Warmup",
    "as_schedule",
    "available",
    "create",
    "progress",
    "reverse_gradient",
]


def _check_int(name: str, value: int) -> int:
    if type(value) is int:  # the common case, without the slower ABC check below
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_total_steps(total_steps: int) -> int:
    total_steps = _check_int("total_steps", total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return total_steps


def _check_duration(duration: float) -> None:
    _check_finite("duration", duration)
    if not 0.0 < duration <= 1.0:
        raise ValueError(f"duration must be in (0, 1] (a fraction of training), got {duration}")


def progress(step: int, total_steps: int) -> float:
    """Normalized time ``t = step / total_steps`` after checking both arguments.

    Raises:
        ValueError: if ``total_steps < 1``, ``step < 0`` or ``step > total_steps``.

    Example:
        >>> progress(25, 100)
        0.25
    """
    total_steps = _check_total_steps(total_steps)
    step = _check_int("step", step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step > total_steps:
        raise ValueError(
            f"step must be <= total_steps, got step={step} > total_steps={total_steps} "
            "(schedules do not clamp: check the total_steps you passed)"
        )
    return step / total_steps


class Schedule(ABC):
    """A value as a function of training progress: ``schedule(step, total_steps) -> float``."""

    @abstractmethod
    def __call__(self, step: int, total_steps: int) -> float:
        """The value at ``step`` of a run of ``total_steps`` steps."""

    def values(self, total_steps: int) -> list[float]:
        """The value at every step ``0, 1, ..., total_steps`` (``total_steps + 1`` values).

        Example:
            >>> Linear(start=0.0, end=1.0).values(4)
            [0.0, 0.25, 0.5, 0.75, 1.0]
        """
        total_steps = _check_total_steps(total_steps)
        return [self(step, total_steps) for step in range(total_steps + 1)]


@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every step: :math:`v(t) = \\text{value}`.

    Example:
        >>> Constant(0.9)(step=10, total_steps=100)
        0.9
    """

    value: float

    def __post_init__(self) -> None:
        _check_finite("value", self.value)

    def __call__(self, step: int, total_steps: int) -> float:
        progress(step, total_steps)
        return float(self.value)


@dataclass(frozen=True)
class Exponential(Schedule):
    """Exponential decay from ``start`` toward the floor ``end``.

    .. math::

        v(t) = \\text{end} + (\\text{start} - \\text{end})\\, e^{-k t},
        \\qquad t = \\text{step} / \\text{total\\_steps}

    ``rate`` (:math:`k`) is per *normalized* time: by the end of training the distance to
    ``end`` has shrunk by :math:`e^{-k}`, whatever ``total_steps`` is (``k = n·ln 2`` gives
    ``n`` half-lives over the run). With ``end = 0`` this is :math:`v_0 e^{-k t}`, e.g. the
    α(t) = α₀·exp(−k·t) soft-target weight. The value stays between ``start`` and ``end``.

    Example:
        >>> round(Exponential(start=0.9, rate=math.log(2), end=0.1)(100, 100), 6)
        0.5
    """

    start: float
    rate: float
    end: float = 0.0

    def __post_init__(self) -> None:
        for name in ("start", "rate", "end"):
            _check_finite(name, getattr(self, name))
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 (a decay toward end), got {self.rate}")

    def __call__(self, step: int, total_steps: int) -> float:
        t = progress(step, total_steps)
        return self.end + (self.start - self.end) * math.exp(-self.rate * t)


@dataclass(frozen=True)
class Linear(Schedule):
    """Straight line from ``start`` to ``end``, reached at fraction ``duration`` of training.

    .. math::

        v(t) = \\text{start} + (\\text{end} - \\text{start})\\,
        \\min(t / \\text{duration}, 1)

    Example:
        >>> Linear(start=1.0, end=4.0, duration=0.5)(25, 100)
        2.5
    """

    start: float
    end: float
    duration: float = 1.0

    def __post_init__(self) -> None:
        _check_finite("start", self.start)
        _check_finite("end", self.end)
        _check_duration(self.duration)

    def __call__(self, step: int, total_steps: int) -> float:
        fraction = min(progress(step, total_steps) / self.duration, 1.0)
        return self.start + (self.end - self.start) * fraction


@dataclass(frozen=True)
class Cosine(Schedule):
    """Half cosine from ``start`` to ``end``, reached at fraction ``duration`` of training.

    .. math::

        v(t) = \\text{end} + (\\text{start} - \\text{end})\\,
        \\frac{1 + \\cos(\\pi \\min(t / \\text{duration}, 1))}{2}

    (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts.) Flat at both ends, steepest
    in the middle; ``end`` is held after ``duration``.

    Example:
        >>> Cosine(start=4.0, end=2.0)(50, 100)
        3.0
    """

    start: float
    end: float
    duration: float = 1.0

    def __post_init__(self) -> None:
        _check_finite("start", self.start)
        _check_finite("end", self.end)
        _check_duration(self.duration)

    def __call__(self, step: int, total_steps: int) -> float:
        fraction = min(progress(step, total_steps) / self.duration, 1.0)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


@dataclass(frozen=True)
class Step(Schedule):
    """Piecewise constant: ``start`` multiplied by ``gamma`` at each milestone passed.

    .. math::

        v(t) = \\text{start} \\cdot \\gamma^{\\,|\\{m \\in \\text{milestones} : m \\le t\\}|}

    Milestones are *fractions of training* in ``(0, 1]``, strictly increasing (``(0.5, 0.75)``
    = halfway and three quarters through), like ``torch.optim.lr_scheduler.MultiStepLR`` but
    independent of the run length.

    Example:
        >>> Step(start=1.0, milestones=(0.5, 0.75), gamma=0.1).values(4)
        [1.0, 1.0, 0.1, 0.010000000000000002, 0.010000000000000002]
    """

    start: float
    milestones: tuple[float, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _check_finite("start", self.start)
        _check_finite("gamma", self.gamma)
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        milestones = tuple(self.milestones)
        for milestone in milestones:
            _check_finite("each milestone", milestone)
            if not 0.0 < milestone <= 1.0:
                raise ValueError(
                    f"milestones must be fractions of training in (0, 1], got {milestones}"
                )
        if any(later <= earlier for earlier, later in itertools.pairwise(milestones)):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        object.__setattr__(self, "milestones", milestones)

    def __call__(self, step: int, total_steps: int) -> float:
        t = progress(step, total_steps)
        passed = sum(1 for milestone in self.milestones if milestone <= t)
        return self.start * self.gamma**passed


@dataclass(frozen=True)
class Warmup(Schedule):
    """Ramp another schedule (or a constant) up from 0 over the first ``warmup_steps`` steps.

    .. math::

        v(\\text{step}) = \\min\\!\\left(\\frac{\\text{step}}{\\text{warmup\\_steps}}, 1\\right)
        \\cdot \\text{inner}(\\text{step}, \\text{total\\_steps})

    ``warmup_steps`` counts optimizer steps (not a fraction); ``0`` means no warmup. A number
    given as ``inner`` becomes a :class:`Constant`.

    Example:
        >>> Warmup(inner=2.0, warmup_steps=4).values(6)
        [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    """

    inner: Schedule | float
    warmup_steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "inner", as_schedule(self.inner))
        warmup_steps = _check_int("warmup_steps", self.warmup_steps)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        object.__setattr__(self, "warmup_steps", warmup_steps)

    def __call__(self, step: int, total_steps: int) -> float:
        inner_value = self.inner(step, total_steps)  # checks step and total_steps
        if step >= self.warmup_steps:
            return inner_value
        return step / self.warmup_steps * inner_value


_SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "exponential": Exponential,
    "linear": Linear,
    "cosine": Cosine,
    "step": Step,
    "warmup": Warmup,
}


def available() -> list[str]:
    """Sorted names accepted by :func:`create`."""
    return sorted(_SCHEDULES)


def create(name: str | Schedule, **kwargs: object) -> Schedule:
    """Build the schedule registered under ``name`` (a schedule passes through unchanged).

    Raises:
        KeyError: unknown name (the message suggests the closest names).
        TypeError: an argument the schedule does not have.

    Example:
        >>> create("cosine", start=4.0, end=1.0)
        Cosine(start=4.0, end=1.0, duration=1.0)
    """
    if isinstance(name, Schedule):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a schedule name")
        return name
    if name not in _SCHEDULES:
        close = difflib.get_close_matches(str(name), list(_SCHEDULES), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown schedule {name!r}{hint} (available: {', '.join(available())})")
    schedule_class = _SCHEDULES[name]
    accepted = [field.name for field in dataclasses.fields(schedule_class)]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise TypeError(
            f"schedule {name!r} got unexpected argument(s) {unexpected}; it accepts {accepted}"
        )
    return schedule_class(**kwargs)


def as_schedule(value: float | Schedule) -> Schedule:
    """A schedule unchanged; a plain number as a :class:`Constant`.

    Example:
        >>> as_schedule(4)
        Constant(value=4.0)
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a number or a Schedule, got {type(value).__name__} {value!r}")
    return Constant(float(value))


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, tensor: Tensor, strength: float
    ) -> Tensor:
        ctx.strength = strength
        return tensor.clone()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor, None]:
        return grad_output * -ctx.strength, None


def reverse_gradient(tensor: Tensor, strength: float) -> Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, ICML 2015).

    .. math::

        \\text{forward}(x) = x, \\qquad
        \\frac{\\partial L}{\\partial x} \\mapsto -\\lambda\\,\\frac{\\partial L}{\\partial x}

    Whatever produced ``tensor`` receives the reversed gradient, so a descent step on its
    parameters *increases* the loss.

    Example:
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> (3.0 * reverse_gradient(x, 0.5)).backward()
        >>> x.grad
        tensor(-1.5000)
    """
    _check_finite("strength", strength)
    if strength < 0:
        raise ValueError(f"strength must be >= 0 (it is negated in backward), got {strength}")
    return _ReverseGradient.apply(tensor, float(strength))


# The reference ramps λ over the first 10 of its 240 epochs (decay_loops=10, epochs=240).
_REFERENCE_LAMBDA_RAMP = Cosine(start=0.0, end=1.0, duration=10 / 240)


class LearnableTemperature(nn.Module):
    """Curriculum temperature learned adversarially (CTKD; Li et al., AAAI 2023).

    .. math::

        \\tau = \\tau_{\\min} + \\tau_{\\text{range}}\\,\\sigma(\\theta), \\qquad
        \\min_{\\text{student}} \\max_{\\theta} L_{KD}(\\tau)

    In ``"global"`` mode :math:`\\theta` is one learned scalar and ``forward`` returns a scalar
    tensor. In ``"instance"`` mode :math:`\\theta` comes from a two-layer MLP per row: as in the
    reference's instance-wise variant its input is the teacher's top-``k`` probabilities
    (sorted) concatenated with the student's probabilities at the same classes, detached (the
    temperature net never trains the student); ``forward`` returns one τ per row (``[B]`` for
    ``[B, C]`` logits, ``[B, L]`` for ``[B, L, V]``). The reference puts BatchNorm after the
    first layer; it is left out here so a batch of one works and train/eval agree.

    ``forward`` passes τ through :func:`reverse_gradient` with strength λ, so the ordinary
    descent step on ``loss = kd_loss(..., temperature=tau)`` makes the student *minimize* the
    loss while θ *maximizes* it (the curriculum: harder as λ grows). λ follows
    ``lambda_schedule``; call :meth:`set_progress` each step (λ is not saved in the state
    dict). The default ramps λ from 0 to 1 with a half cosine over the first 10/240 of
    training, as the reference does (λ_min=0, λ_max=1, 10 of 240 epochs):

    .. math::

        \\lambda(t) = \\lambda_{\\min} + (\\lambda_{\\max} - \\lambda_{\\min})
        \\frac{1 - \\cos(\\pi \\min(t / t_{\\text{ramp}}, 1))}{2}

    Reference defaults: τ ∈ [1, 21] (``t_start=1``, ``t_end=20`` used as τ_min + 20·σ),
    θ initialized to 1 (τ₀ ≈ 15.6). Here the instance MLP's last layer starts at weight 0,
    bias ``initial_logit``, so both modes start from the same τ₀ (the reference's instance
    head starts at θ = 0).

    Args:
        mode: ``"global"`` (one τ) or ``"instance"`` (one τ per row).
        tau_min: smallest temperature, > 0.
        tau_range: width of the temperature interval, > 0; τ ∈ (τ_min, τ_min + tau_range).
        initial_logit: θ at initialization.
        num_classes: number of classes ``C`` (required in instance mode).
        top_k: teacher classes fed to the MLP (instance mode); ``None`` = all ``C``.
        hidden_dim: MLP hidden width (instance mode; the reference uses 256).
        lambda_schedule: λ as a schedule (or a constant), values >= 0.

    Example:
        >>> temperature = LearnableTemperature()
        >>> temperature.set_progress(step=50, total_steps=100)
        >>> temperature.reversal_strength
        1.0
        >>> round(temperature().item(), 3)
        15.621
    """

    def __init__(
        self,
        mode: Literal["global", "instance"] = "global",
        *,
        tau_min: float = 1.0,
        tau_range: float = 20.0,
        initial_logit: float = 1.0,
        num_classes: int | None = None,
        top_k: int | None = None,
        hidden_dim: int = 256,
        lambda_schedule: Schedule | float = _REFERENCE_LAMBDA_RAMP,
    ) -> None:
        super().__init__()
        if mode not in ("global", "instance"):
            raise ValueError(f"mode must be 'global' or 'instance', got {mode!r}")
        for name, value in (("tau_min", tau_min), ("tau_range", tau_range)):
            _check_finite(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        _check_finite("initial_logit", initial_logit)
        self.mode = mode
        self.tau_min = float(tau_min)
        self.tau_range = float(tau_range)
        self.lambda_schedule = as_schedule(lambda_schedule)
        self.reversal_strength = 0.0
        self.set_progress(0, 1)
        self.num_classes: int | None = None
        self.top_k: int | None = None
        if mode == "global":
            self.temperature_logit = nn.Parameter(torch.tensor(float(initial_logit)))
            return
        if num_classes is None:
            raise ValueError("num_classes is required in instance mode (it sizes the MLP)")
        self.num_classes = _check_int("num_classes", num_classes)
        self.top_k = self.num_classes if top_k is None else _check_int("top_k", top_k)
        if not 1 <= self.top_k <= self.num_classes:
            raise ValueError(f"top_k must be in [1, num_classes={num_classes}], got {top_k}")
        hidden_dim = _check_int("hidden_dim", hidden_dim)
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.logit_net = nn.Sequential(
            nn.Linear(2 * self.top_k, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )
        nn.init.zeros_(self.logit_net[-1].weight)
        nn.init.constant_(self.logit_net[-1].bias, float(initial_logit))

    def set_progress(self, step: int, total_steps: int) -> None:
        """Set λ to ``lambda_schedule(step, total_steps)``; call it before each forward."""
        strength = self.lambda_schedule(step, total_steps)
        _check_finite("lambda_schedule value", strength)
        if strength < 0:
            raise ValueError(f"lambda_schedule must give values >= 0, got {strength} at {step}")
        self.reversal_strength = float(strength)

    def forward(
        self, student_logits: Tensor | None = None, teacher_logits: Tensor | None = None
    ) -> Tensor:
        """τ with the gradient reversal applied: a scalar, or one value per row ``[...]``.

        Logits (``[..., C]``) are required in instance mode and ignored in global mode.
        """
        if self.mode == "global":
            logit = self.temperature_logit
        else:
            logit = self._instance_logit(student_logits, teacher_logits)
        temperature = self.tau_min + self.tau_range * torch.sigmoid(logit)
        return reverse_gradient(temperature, self.reversal_strength)

    def _instance_logit(
        self, student_logits: Tensor | None, teacher_logits: Tensor | None
    ) -> Tensor:
        if student_logits is None or teacher_logits is None:
            raise ValueError("instance mode needs student_logits and teacher_logits")
        check_pair(student_logits, teacher_logits)
        if student_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"expected logits with num_classes={self.num_classes} classes, got shape "
                f"{tuple(student_logits.shape)}"
            )
        dtype = self.logit_net[0].weight.dtype
        teacher_probs = teacher_logits.detach().to(dtype).softmax(dim=-1)
        student_probs = student_logits.detach().to(dtype).softmax(dim=-1)
        teacher_top, top_classes = teacher_probs.topk(self.top_k, dim=-1)
        student_at_top = student_probs.gather(-1, top_classes)
        features = torch.cat([teacher_top, student_at_top], dim=-1)
        return self.logit_net(features).squeeze(-1)

    def extra_repr(self) -> str:
        parts = [f"mode={self.mode!r}", f"tau_min={self.tau_min}", f"tau_range={self.tau_range}"]
        if self.mode == "instance":
            parts += [f"num_classes={self.num_classes}", f"top_k={self.top_k}"]
        parts += [f"lambda_schedule={self.lambda_schedule}"]
        return ", ".join(parts)
