"""Schedules for α, T and loss weights: callables of training progress.

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
import itertools
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass

from torchkd._registry import Registry

__all__ = [
    "Constant",
    "Cosine",
    "Exponential",
    "Linear",
    "Schedule",
    "Step",
    "Warmup",
    "as_schedule",
    "available",
    "create",
    "progress",
]

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def check_int(name: str, value: int) -> int:
    if type(value) is int:  # the common case, without the slower ABC check below
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _check_total_steps(total_steps: int) -> int:
    total_steps = check_int("total_steps", total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return total_steps


def _check_duration(duration: float) -> None:
    check_finite("duration", duration)
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
    step = check_int("step", step)
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


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(Schedule):
    """The same value at every step: :math:`v(t) = \\text{value}`.

    Example:
        >>> Constant(0.9)(step=10, total_steps=100)
        0.9
    """

    value: float

    def __post_init__(self) -> None:
        check_finite("value", self.value)

    def __call__(self, step: int, total_steps: int) -> float:
        progress(step, total_steps)
        return float(self.value)


@SCHEDULES.register("exponential")
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
            check_finite(name, getattr(self, name))
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 (a decay toward end), got {self.rate}")

    def __call__(self, step: int, total_steps: int) -> float:
        t = progress(step, total_steps)
        return self.end + (self.start - self.end) * math.exp(-self.rate * t)


@dataclass(frozen=True)
class _Ramp(Schedule):
    """A move from ``start`` to ``end`` over the first ``duration`` of training (the shape is
    the subclass's); ``end`` is held afterwards."""

    start: float
    end: float
    duration: float = 1.0

    def __post_init__(self) -> None:
        check_finite("start", self.start)
        check_finite("end", self.end)
        _check_duration(self.duration)

    def fraction(self, step: int, total_steps: int) -> float:
        """How far the ramp has gone: :math:`\\min(t / \\text{duration}, 1)`."""
        return min(progress(step, total_steps) / self.duration, 1.0)


@SCHEDULES.register("linear")
@dataclass(frozen=True)
class Linear(_Ramp):
    """Straight line from ``start`` to ``end``, reached at fraction ``duration`` of training.

    .. math::

        v(t) = \\text{start} + (\\text{end} - \\text{start})\\,
        \\min(t / \\text{duration}, 1)

    Example:
        >>> Linear(start=1.0, end=4.0, duration=0.5)(25, 100)
        2.5
    """

    def __call__(self, step: int, total_steps: int) -> float:
        fraction = self.fraction(step, total_steps)
        return self.start + (self.end - self.start) * fraction


@SCHEDULES.register("cosine")
@dataclass(frozen=True)
class Cosine(_Ramp):
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

    def __call__(self, step: int, total_steps: int) -> float:
        fraction = self.fraction(step, total_steps)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * fraction))


@SCHEDULES.register("step")
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
        check_finite("start", self.start)
        check_finite("gamma", self.gamma)
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        milestones = tuple(self.milestones)
        for milestone in milestones:
            check_finite("each milestone", milestone)
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


@SCHEDULES.register("warmup")
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
        warmup_steps = check_int("warmup_steps", self.warmup_steps)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        object.__setattr__(self, "warmup_steps", warmup_steps)

    def __call__(self, step: int, total_steps: int) -> float:
        inner_value = self.inner(step, total_steps)  # checks step and total_steps
        if step >= self.warmup_steps:
            return inner_value
        return step / self.warmup_steps * inner_value


def available() -> list[str]:
    """Sorted names accepted by :func:`create`."""
    return SCHEDULES.available()


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
    schedule_class = SCHEDULES.entry(name)
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
