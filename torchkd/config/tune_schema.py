"""The ``tune:`` section of a recipe: the search space and settings of ``torchkd tune``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from torchkd.train.config import Float, NonNegativeInt, PositiveFloat, PositiveInt, Section

__all__ = ["SearchParam", "TuneConfig"]


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class SearchParam(Section):
    """One entry of ``tune.space:``, keyed by the dotted recipe path it sets.

    ``{type: float, low: 1, high: 8}``; ``{type: float, low: 1.0e-4, high: 0.1, log: true}``;
    ``{type: int, low: 4, high: 16, step: 4}``; ``{type: categorical, choices: [adam, sgd]}``.
    The grid sampler tries ``grid: [...]`` when given, else the choices, every ``step`` from
    ``low`` to ``high``, or every integer.

    Attributes:
        type: ``float``, ``int`` or ``categorical``.
        low: smallest value (numbers).
        high: largest value, included (numbers).
        log: sample on a log scale (``low > 0``; not with ``step``).
        step: spacing of the values (numbers).
        choices: the values of a categorical entry (strings, numbers, booleans, null).
        grid: the values the grid sampler tries.
    """

    type: Literal["float", "int", "categorical"]
    low: Float | None = None
    high: Float | None = None
    log: bool = False
    step: PositiveFloat | None = None
    choices: Annotated[list[Any], Field(min_length=1)] | None = None
    grid: Annotated[list[Any], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            self._check_categorical()
        else:
            self._check_numeric()
        return self

    def _check_categorical(self) -> None:
        if self.choices is None:
            raise ValueError("choices: required (a list of values) for type categorical")
        used = [name for name in ("low", "high", "step") if getattr(self, name) is not None]
        if used or self.log:
            raise ValueError(f"{', '.join(used or ['log'])}: not used by type categorical")
        if not all(map(_is_scalar, self.choices)):
            raise ValueError("choices: expected strings, numbers, booleans or null")
        outside = [value for value in self.grid or [] if value not in self.choices]
        if outside:
            raise ValueError(f"grid: values {outside} are not among the choices")

    def _check_numeric(self) -> None:
        if self.low is None or self.high is None:
            raise ValueError(f"low, high: both required for type {self.type}")
        if self.choices is not None:
            raise ValueError(f"choices: only used by type categorical, not {self.type}")
        if self.low > self.high:
            raise ValueError(f"low: expected low <= high, got {self.low} > {self.high}")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: needs low > 0 and no step")
        if self.type == "int":
            given = {"low": self.low, "high": self.high, "step": self.step}
            fractional = [k for k, v in given.items() if v is not None and v != int(v)]
            if fractional:
                raise ValueError(f"{', '.join(fractional)}: expected integers for type int")
        numbers = [v for v in self.grid or [] if _is_number(v) and not isinstance(v, str)]
        if len(numbers) != len(self.grid or []):
            raise ValueError(f"grid: expected numbers for type {self.type}")
        if self.type == "int" and any(v != int(v) for v in numbers):
            raise ValueError("grid: expected integers for type int")
        outside = [v for v in numbers if not self.low <= v <= self.high]
        if outside:
            raise ValueError(f"grid: values {outside} are outside [{self.low}, {self.high}]")


class TuneConfig(Section):
    """``tune:``: the hyperparameter search of ``torchkd tune`` (see :mod:`torchkd.tune`).

    Attributes:
        space: ``{dotted recipe path: SearchParam}``, e.g.
            ``terms.0.loss_kwargs.temperature: {type: float, low: 1, high: 8}``.
        trials: finished trials (complete or pruned) the search runs to.
        sampler: ``tpe`` (Bayesian, tree-structured Parzen estimator), ``random`` or
            ``grid``.
        pruner: stop unpromising trials early from their per-epoch validation metric:
            ``median``, ``hyperband`` or ``none``.
        metric: the validation metric the search optimizes (``top1`` up, ``nll`` down).
        seed: the sampler's seed.
        startup_trials: random trials before TPE models the space, and complete trials
            before the median pruner prunes.
        warmup_epochs: epochs every trial trains before it can be pruned.
    """

    space: Annotated[dict[str, SearchParam], Field(min_length=1)]
    trials: PositiveInt = 20
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    metric: Literal["top1", "nll"] = "top1"
    seed: NonNegativeInt = 0
    startup_trials: NonNegativeInt = 5
    warmup_epochs: NonNegativeInt = 1
