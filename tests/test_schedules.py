"""Tests for torchkd.schedules: schedules against their formulas and the registry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkd.schedules import (
    Constant,
    Cosine,
    Exponential,
    Linear,
    Schedule,
    Step,
    Warmup,
    as_schedule,
    available,
    create,
    progress,
)

# ----------------------------------------------------------------------------- known values


def test_constant_values() -> None:
    assert Constant(0.3).values(3) == [0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize(
    ("start", "rate", "end"), [(0.9, 2.0, 0.0), (4.0, 0.5, 1.0), (1.0, 3.0, 2.0)]
)
def test_exponential_matches_formula(start: float, rate: float, end: float) -> None:
    total_steps = 10
    steps = np.arange(total_steps + 1)
    expected = end + (start - end) * np.exp(-rate * steps / total_steps)
    np.testing.assert_allclose(
        Exponential(start, rate, end).values(total_steps), expected, rtol=1e-14
    )


def test_exponential_rate_is_per_normalized_time() -> None:
    schedule = Exponential(start=0.8, rate=math.log(4))  # two half-lives over any run
    for total_steps in (4, 100, 1000):
        assert schedule(total_steps // 2, total_steps) == pytest.approx(0.4)
        assert schedule(total_steps, total_steps) == pytest.approx(0.2)


def test_linear_values_and_duration() -> None:
    assert Linear(2.0, 6.0).values(4) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert Linear(0.0, 1.0, duration=0.5).values(4) == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_cosine_values_and_duration() -> None:
    root2 = math.sqrt(2.0)
    expected = [1.0, (2 + root2) / 4, 0.5, (2 - root2) / 4, 0.0]
    np.testing.assert_allclose(Cosine(1.0, 0.0).values(4), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        Cosine(3.0, 5.0, duration=0.5).values(4), [3, 4, 5, 5, 5], atol=1e-15
    )


def test_step_changes_exactly_at_milestones() -> None:
    values = Step(start=2.0, milestones=(0.3, 0.6), gamma=0.5).values(10)
    assert values == [2.0] * 3 + [1.0] * 3 + [0.5] * 5


def test_step_accepts_a_list_and_stores_a_tuple() -> None:
    schedule = Step(start=1.0, milestones=[0.5], gamma=0.1)  # type: ignore[arg-type]
    assert schedule.milestones == (0.5,)
    assert hash(schedule) == hash(Step(1.0, (0.5,), 0.1))


def test_warmup_wraps_a_schedule() -> None:
    values = Warmup(Linear(1.0, 3.0), warmup_steps=2).values(4)
    assert values == [0.0, 0.5 * 1.5, 2.0, 2.5, 3.0]


def test_warmup_number_and_zero_steps() -> None:
    assert Warmup(0.8, warmup_steps=4).inner == Constant(0.8)
    assert Warmup(0.8, warmup_steps=4)(1, 10) == pytest.approx(0.2)
    assert Warmup(Cosine(1.0, 0.0), warmup_steps=0).values(4) == Cosine(1.0, 0.0).values(4)


def test_warmup_longer_than_training_never_reaches_full_value() -> None:
    assert Warmup(1.0, warmup_steps=20).values(10)[-1] == 0.5


def test_values_is_one_call_per_step() -> None:
    schedule = Exponential(1.0, 1.0)
    values = schedule.values(7)
    assert len(values) == 8
    assert values == [schedule(step, 7) for step in range(8)]


def test_schedules_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Linear(0.0, 1.0).start = 2.0  # type: ignore[misc]


# ------------------------------------------------------------------------------- properties

finite = st.floats(-100.0, 100.0, allow_nan=False)
duration = st.floats(0.01, 1.0)


def _within(value: float, low: float, high: float) -> bool:
    slack = 1e-12 * max(1.0, abs(low), abs(high))
    return low - slack <= value <= high + slack


@st.composite
def step_and_total(draw: st.DrawFn) -> tuple[int, int]:
    total_steps = draw(st.integers(1, 10_000))
    return draw(st.integers(0, total_steps)), total_steps


@settings(max_examples=60, deadline=None)
@given(finite, finite, duration, step_and_total())
def test_linear_and_cosine_stay_between_start_and_end(
    start: float, end: float, fraction: float, steps: tuple[int, int]
) -> None:
    for schedule in (Linear(start, end, fraction), Cosine(start, end, fraction)):
        assert _within(schedule(*steps), min(start, end), max(start, end))


@settings(max_examples=60, deadline=None)
@given(finite, st.floats(0.0, 50.0), finite, step_and_total())
def test_exponential_stays_between_start_and_end(
    start: float, rate: float, end: float, steps: tuple[int, int]
) -> None:
    assert _within(Exponential(start, rate, end)(*steps), min(start, end), max(start, end))


@settings(max_examples=40, deadline=None)
@given(finite, finite, duration, st.integers(1, 200))
def test_linear_and_cosine_are_monotone_toward_end(
    start: float, end: float, fraction: float, total_steps: int
) -> None:
    direction = 1.0 if end >= start else -1.0
    for schedule in (Linear(start, end, fraction), Cosine(start, end, fraction)):
        values = np.array(schedule.values(total_steps))
        assert (direction * np.diff(values) >= -1e-12 * max(1.0, abs(start), abs(end))).all()


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.0, 100.0),
    st.lists(st.floats(0.001, 1.0), min_size=1, max_size=4, unique=True),
    st.floats(0.0, 1.0),
    step_and_total(),
)
def test_step_stays_between_floor_and_start(
    start: float, milestones: list[float], gamma: float, steps: tuple[int, int]
) -> None:
    schedule = Step(start, tuple(sorted(milestones)), gamma)
    assert _within(schedule(*steps), start * gamma ** len(milestones), start)


@settings(max_examples=60, deadline=None)
@given(finite, st.integers(0, 500), step_and_total())
def test_warmup_of_a_constant_stays_between_zero_and_value(
    value: float, warmup_steps: int, steps: tuple[int, int]
) -> None:
    result = Warmup(value, warmup_steps)(*steps)
    assert _within(result, min(0.0, value), max(0.0, value))
    step = steps[0]
    assert result == pytest.approx(min(step / warmup_steps, 1.0) * value if warmup_steps else value)


# ------------------------------------------------------------------------------- validation

ALL_SCHEDULES: list[Schedule] = [
    Constant(1.0),
    Exponential(1.0, 1.0),
    Linear(0.0, 1.0),
    Cosine(0.0, 1.0),
    Step(1.0, (0.5,)),
    Warmup(1.0, 2),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize(
    ("step", "total_steps", "message"),
    [
        (-1, 10, "step must be >= 0"),
        (11, 10, "step must be <= total_steps"),
        (0, 0, "total_steps must be >= 1"),
        (0, -5, "total_steps must be >= 1"),
    ],
)
def test_bad_steps_raise(schedule: Schedule, step: int, total_steps: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedule(step, total_steps)


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_non_integer_steps_raise(schedule: Schedule) -> None:
    with pytest.raises(TypeError, match="step must be an int"):
        schedule(1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        schedule.values(0)


def test_progress_accepts_numpy_integers() -> None:
    assert progress(np.int64(3), np.int64(4)) == 0.75
    assert progress(10, 10) == 1.0


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: Constant(float("nan")), ValueError, "value must be a finite number"),
        (lambda: Exponential(1.0, -0.1), ValueError, "rate must be >= 0"),
        (lambda: Exponential(float("inf"), 1.0), ValueError, "start must be a finite"),
        (lambda: Linear(0.0, 1.0, duration=0.0), ValueError, r"duration must be in \(0, 1\]"),
        (lambda: Cosine(0.0, 1.0, duration=1.5), ValueError, r"duration must be in \(0, 1\]"),
        (lambda: Step(1.0, (0.0,)), ValueError, r"fractions of training in \(0, 1\]"),
        (lambda: Step(1.0, (1.2,)), ValueError, r"fractions of training in \(0, 1\]"),
        (lambda: Step(1.0, (0.5, 0.5)), ValueError, "strictly increasing"),
        (lambda: Step(1.0, (0.6, 0.3)), ValueError, "strictly increasing"),
        (lambda: Step(1.0, (0.5,), gamma=-1.0), ValueError, "gamma must be >= 0"),
        (lambda: Warmup(1.0, -1), ValueError, "warmup_steps must be >= 0"),
        (lambda: Warmup(1.0, 2.5), TypeError, "warmup_steps must be an int"),
        (lambda: Warmup("high", 2), TypeError, "expected a number or a Schedule"),
    ],
)
def test_bad_arguments_raise(build, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build()


# --------------------------------------------------------------------------------- registry


def test_available_lists_every_schedule() -> None:
    assert available() == ["constant", "cosine", "exponential", "linear", "step", "warmup"]


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("constant", {"value": 2.0}, Constant(2.0)),
        ("exponential", {"start": 1.0, "rate": 2.0, "end": 0.1}, Exponential(1.0, 2.0, 0.1)),
        ("linear", {"start": 0.0, "end": 1.0}, Linear(0.0, 1.0)),
        ("cosine", {"start": 4.0, "end": 1.0, "duration": 0.5}, Cosine(4.0, 1.0, 0.5)),
        ("step", {"start": 1.0, "milestones": [0.5, 0.8]}, Step(1.0, (0.5, 0.8))),
        ("warmup", {"inner": 0.9, "warmup_steps": 5}, Warmup(Constant(0.9), 5)),
    ],
)
def test_create_builds_each_schedule(name: str, kwargs: dict, expected: Schedule) -> None:
    assert create(name, **kwargs) == expected


def test_create_unknown_name_suggests_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'cosine'"):
        create("cosin")
    with pytest.raises(KeyError, match="available: constant, cosine"):
        create("zzz")


def test_create_unknown_argument_names_it() -> None:
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['strat'\]"):
        create("linear", strat=0.0, end=1.0)


def test_create_passes_a_schedule_through() -> None:
    schedule = Linear(0.0, 1.0)
    assert create(schedule) is schedule
    with pytest.raises(ValueError, match="only accepted with a schedule name"):
        create(schedule, start=1.0)


def test_as_schedule() -> None:
    schedule = Cosine(1.0, 0.0)
    assert as_schedule(schedule) is schedule
    assert as_schedule(0.5) == Constant(0.5)
    assert as_schedule(3) == Constant(3.0)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="expected a number or a Schedule"):
            as_schedule(bad)  # type: ignore[arg-type]
