"""The YAML recipe schema (pydantic) and the one place that turns a recipe into objects.

A recipe names everything by registry name plus keyword arguments::

    name: kd_mnist1d
    data: {dataset: mnist1d, batch_size: 128}
    teacher: {model: cnn1d, kwargs: {width: 64}, checkpoint: runs/teacher/checkpoints/best.pt}
    student: {model: cnn1d, kwargs: {width: 6}}
    terms:
      - {name: kd, loss: kd, loss_kwargs: {temperature: 4.0}, weight: 0.9}
      - {name: ce, loss: ce, weight: 0.1}
    train: {epochs: 20, optimizer: {name: adamw, lr: 0.003}}

:func:`load_recipe` reads the YAML (``yaml.safe_load``), applies ``key=value`` overrides and
validates; every problem is reported with its YAML path (``train.optimizer.lr: expected a
number, got 'abc'``). :func:`build_from_recipe` seeds, builds the models, loaders and the
:class:`~torchkd.distiller.Distiller`. Sections forbid unknown keys; a new section (e.g.
``tune:``) is one more field on :class:`Recipe`.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

if TYPE_CHECKING:
    from torch import nn

    from torchkd.data import Loaders
    from torchkd.distiller import Distiller, Term
    from torchkd.train import FitResult

__all__ = [
    "Built",
    "ConfigError",
    "DataConfig",
    "LRScheduleConfig",
    "ModelConfig",
    "OptimizerConfig",
    "Recipe",
    "SearchParam",
    "TermConfig",
    "TrainConfig",
    "TransferConfig",
    "TuneConfig",
    "apply_overrides",
    "build_distiller",
    "build_from_recipe",
    "build_loaders",
    "build_model",
    "fit_recipe",
    "load_recipe",
    "recipe_from_dict",
    "write_resolved_config",
]


class ConfigError(ValueError):
    """A recipe problem; ``problems`` lists one ``"yaml.path: what was expected"`` per issue."""

    def __init__(self, problems: Sequence[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        header = f"invalid recipe {source}:" if source else "invalid recipe:"
        super().__init__("\n  ".join([header, *self.problems]))


def _refuse_bool(expected: str) -> typing.Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    return check


Float = Annotated[float, BeforeValidator(_refuse_bool("a number"))]
Int = Annotated[int, BeforeValidator(_refuse_bool("an integer"))]
PositiveInt = Annotated[Int, Field(gt=0)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]


def _check_schedule_mapping(spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec.get("name"), str):
        raise ValueError(
            "a schedule mapping needs a string 'name' (e.g. {name: exponential, start: 0.9}), "
            f"got keys {sorted(map(str, spec))}"
        )
    return spec


ScheduleMapping = Annotated[dict[str, Any], AfterValidator(_check_schedule_mapping)]


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _kind_of(*literals: str) -> typing.Callable[[Any], str | None]:
    def kind(value: Any) -> str | None:
        if _is_number(value):
            return "number"
        if isinstance(value, dict):
            return "schedule"
        if value in literals:
            return value
        return None

    return kind


Weight = Annotated[
    Annotated[Float, Tag("number")]
    | Annotated[Literal["auto"], Tag("auto")]
    | Annotated[ScheduleMapping, Tag("schedule")],
    Discriminator(
        _kind_of("auto"),
        custom_error_type="weight_spec",
        custom_error_message="expected a number, 'auto' or a schedule mapping like "
        "{name: exponential, ...}",
    ),
]
Temperature = Annotated[
    Annotated[PositiveFloat, Tag("number")]
    | Annotated[Literal["learned"], Tag("learned")]
    | Annotated[ScheduleMapping, Tag("schedule")],
    Discriminator(
        _kind_of("learned"),
        custom_error_type="temperature_spec",
        custom_error_message="expected a positive number, 'learned', a schedule mapping "
        "like {name: linear, ...} or null",
    ),
]


def _tap_kind(value: Any) -> str | None:
    return "one" if isinstance(value, str) else "many" if isinstance(value, list) else None


TapPath = Annotated[
    Annotated[str, Tag("one")] | Annotated[list[str], Tag("many")],
    Discriminator(
        _tap_kind,
        custom_error_type="tap_path",
        custom_error_message="expected 'logits', a dotted module path or a list of them",
    ),
]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TransferConfig(Section):
    """``data.transfer:``: a transfer set that replaces the training split (label-free KD).

    Attributes:
        dataset: registered dataset name, called as ``create_dataset(dataset, "train",
            num_samples=..., seed=..., **kwargs)``.
        num_samples: how many transfer samples.
        seed: the transfer set's generation seed.
        labeled: ``false`` drops any labels (honest label-free distillation); ``true`` keeps
            them and requires the dataset to have them.
        kwargs: more dataset arguments.
    """

    dataset: str = "mnist1d_transfer"
    num_samples: PositiveInt
    seed: NonNegativeInt = 1
    labeled: bool = False
    kwargs: dict[str, Any] = {}


class AugmentConfig(Section):
    """``data.augment:``: training-time augmentation (the training loader only).

    Each training batch is augmented with a generator seeded from the training loader's
    generator, so the augmentation is reproducible and resumes exactly.

    Attributes:
        shift: random circular shift of each input by up to this many positions along its
            last axis (``torchkd.data.batching.random_circular_shift``); 0: none.
    """

    shift: NonNegativeInt = 0


class DataConfig(Section):
    """``data:``: which dataset, how it is split and batched.

    Attributes:
        dataset: registered labeled dataset (``torchkd.data.available_datasets()``); its
            validation and test splits are always used for evaluation.
        kwargs: more dataset arguments (e.g. ``cache``).
        batch_size: training batch size (per micro-batch with gradient accumulation).
        eval_batch_size: validation/test batch size (default ``batch_size``).
        val_fraction: fraction of the training split held out for validation.
        seed: seed of the train/validation partition (the shuffle order follows
            ``train.seed``).
        num_workers: DataLoader worker processes.
        transfer: optional transfer set replacing the training split.
        augment: training-time augmentation (see :class:`AugmentConfig`).
    """

    dataset: str
    kwargs: dict[str, Any] = {}
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt | None = None
    val_fraction: Annotated[Float, Field(ge=0, lt=1)] = 0.1
    seed: NonNegativeInt = 0
    num_workers: NonNegativeInt = 0
    transfer: TransferConfig | None = None
    augment: AugmentConfig | None = None


class ModelConfig(Section):
    """``student:`` / ``teacher:`` / ``teachers: [...]``: a model and optionally its weights.

    Attributes:
        model: a registered name (``torchkd.models.available_models()``) or
            ``"package.module:Class"`` for your own ``nn.Module`` (imported; trust the recipe).
        kwargs: constructor arguments.
        checkpoint: weights to load: ``.safetensors``, a torchkd checkpoint (its student
            weights, e.g. ``runs/teacher/checkpoints/best.pt``) or a saved state dict.
    """

    model: str
    kwargs: dict[str, Any] = {}
    checkpoint: str | None = None


class TermConfig(Section):
    """One entry of ``terms:``, mirroring :class:`torchkd.distiller.Term`.

    Attributes:
        name: the term's name in logs and ``DistillOutput.terms`` (unique).
        loss: a registered loss (``torchkd.losses.available()``).
        loss_kwargs: keyword arguments of the loss.
        weight: a number, ``auto`` (uncertainty weighting) or a schedule mapping
            ``{name: exponential, start: 0.9, rate: 2.0}`` (``torchkd.schedules.create``).
        student: ``logits`` or a dotted module path to tap (a list for feature-list losses).
        teacher: the same on the teacher side.
        adapter: student-to-teacher shape adapter.
        temperature: ``null`` (the loss's own), a number, ``learned`` (CTKD) or a schedule
            mapping.
        teacher_index: which teacher of ``teachers:`` the term reads (multi-teacher losses
            read all of them).
    """

    name: str
    loss: str
    loss_kwargs: dict[str, Any] = {}
    weight: Weight = 1.0
    student: TapPath = "logits"
    teacher: TapPath = "logits"
    adapter: Literal["auto", "conv1x1", "linear", "pool", "none"] = "auto"
    temperature: Temperature | None = None
    teacher_index: NonNegativeInt = 0


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
        seed: seeds Python, NumPy and torch, the model initialization (via
            :func:`build_from_recipe`) and each epoch's shuffle order.
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
        progress: show a tqdm bar (only on a terminal) and one summary line per epoch.
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


# ------------------------------------------------------------------- tune: (torchkd tune)


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


class Recipe(Section):
    """A whole recipe. Give ``teacher`` (one) or ``teachers`` (a list), or neither.

    ``name`` names the run directory (``runs/<name>/``); ``output_key`` selects the logits in
    model outputs that are tuples or mappings (see :class:`~torchkd.distiller.Distiller`).
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    data: DataConfig
    student: ModelConfig
    teacher: ModelConfig | None = None
    teachers: list[ModelConfig] | None = None
    terms: Annotated[list[TermConfig], Field(min_length=1)]
    output_key: str | int | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig | None = None  # torchkd tune's search (ignored by torchkd train)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("teacher, teachers: give one teacher or a list of teachers, not both")
        names = [term.name for term in self.terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"terms: term names must be unique, repeated: {duplicates}")
        return self

    @property
    def teacher_configs(self) -> list[ModelConfig]:
        """The teachers as a list (empty for a supervised recipe)."""
        if self.teacher is not None:
            return [self.teacher]
        return list(self.teachers or [])


# ---------------------------------------------------------------- schema walking and errors


def _path_text(parts: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in parts) or "<recipe>"


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``None`` from ``annotation``; keep real unions as they are."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    return annotation


def _child_schema(schema: Any, key: str | int) -> Any:
    """The annotation one step below ``schema`` (a model class, a list, or free-form)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _unwrap(schema.model_fields[str(key)].annotation)
    if typing.get_origin(schema) is list:
        return _unwrap(typing.get_args(schema)[0])
    return Any


def _is_model(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"expected one of: {', '.join(options)}"


def _schema_at(parts: Sequence[str | int]) -> Any:
    schema: Any = Recipe
    for part in parts:
        if _is_model(schema) and str(part) not in schema.model_fields:
            return Any
        schema = _child_schema(schema, part)
    return schema


def _clean_location(location: tuple[Any, ...], data: Any, error_type: str) -> list[str | int]:
    """Drop pydantic's union tags from ``location`` by following it through the raw ``data``."""
    cleaned: list[str | int] = []
    node = data
    for position, part in enumerate(location):
        last = position == len(location) - 1
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif last and error_type == "missing":
            node = None
        else:
            continue
        cleaned.append(part)
    return cleaned


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


_NAMES_ITS_KEY = re.compile(r"^\w+(, \w+)*: ")
_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
_EXPECTATIONS = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "list_type": "expected a list",
}


def _format_error(error: Any, data: Any) -> str:
    error_type = error["type"]
    parts = _clean_location(error["loc"], data, error_type)
    where = _path_text(parts)
    if error_type == "extra_forbidden":
        schema = _schema_at(parts[:-1])
        options = list(schema.model_fields) if _is_model(schema) else []
        return f"{where}: unknown key ({_suggest(str(parts[-1]), options)})"
    if error_type == "missing":
        return f"{where}: required key missing"
    given = f", got {_describe(error['input'])}"
    if error_type == "value_error":
        message = str(error["ctx"]["error"])
        if message.startswith("expected"):
            return f"{where}: {message}"
        if parts and _NAMES_ITS_KEY.match(message):
            return f"{where}.{message}"  # a section validator's "milestones: ..." message
        return f"{where}: {message}"
    if error_type == "literal_error":
        hint = ""
        if isinstance(error["input"], str):
            allowed = [value.strip("'") for value in error["ctx"]["expected"].split("'")[1::2]]
            close = difflib.get_close_matches(error["input"], allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{where}: expected one of {error['ctx']['expected']}{given}{hint}"
    expectation = _EXPECTATIONS.get(error_type)
    if error_type in _BOUNDS:
        expectation = error["msg"].replace("Input should be", "expected a value", 1)
    elif expectation is None:
        expectation = error["msg"].replace("Input should be", "expected", 1)
        expectation = expectation.replace("String should match pattern", "expected a match of")
    return f"{where}: {expectation}{given}"


def _top_level_message(error: Any, data: Any) -> str:
    if error["type"] == "value_error" and not error["loc"]:
        return str(error["ctx"]["error"])
    return _format_error(error, data)


def recipe_from_dict(data: Any, overrides: Sequence[str] = (), source: str | None = None) -> Recipe:
    """Validate ``data`` (a parsed YAML mapping) after applying ``overrides``.

    Raises:
        ConfigError: listing every problem with its YAML path.

    Example:
        >>> raw = {"name": "x", "data": {"dataset": "digits"}, "student": {"model": "mlp"},
        ...        "terms": [{"name": "ce", "loss": "ce"}]}
        >>> recipe_from_dict(raw, ["train.epochs=3"]).train.epochs
        3
        >>> recipe_from_dict(raw, ["train.optimizer.lr=abc"])
        Traceback (most recent call last):
        ...
        torchkd.config.ConfigError: invalid recipe:
          train.optimizer.lr: expected a number, got 'abc'
    """
    if not isinstance(data, dict):
        raise ConfigError([f"<recipe>: expected a mapping at the top level, got {_describe(data)}"])
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = [_top_level_message(item, data) for item in error.errors()]
        raise ConfigError(problems, source) from None


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe with ``yaml.safe_load``, apply ``key=value`` overrides, validate.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: the YAML does not parse or does not match the schema; the message names
            the file and each offending YAML path.
    """
    path = Path(path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"<recipe>: not valid YAML ({error})"], str(path)) from None
    try:
        return recipe_from_dict(data, overrides, str(path))
    except ConfigError as error:
        raise ConfigError(error.problems, str(path)) from None


# ------------------------------------------------------------------------------- overrides


def _split_override(override: str) -> tuple[list[str | int], Any]:
    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise ConfigError([f"override {override!r}: expected key=value (e.g. train.epochs=5)"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"override {override!r}: value is not valid YAML ({error})"]) from None
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in key.strip().split(".")]
    return parts, value


def _set_path(data: dict[str, Any], parts: list[str | int], value: Any, override: str) -> None:
    schema: Any = Recipe
    node: Any = data
    for position, part in enumerate(parts):
        here = _path_text(parts[: position + 1])
        last = position == len(parts) - 1
        if _is_model(schema):
            if str(part) not in schema.model_fields:
                hint = _suggest(str(part), list(schema.model_fields))
                raise ConfigError([f"override {override!r}: {here} is not a recipe key ({hint})"])
            part = str(part)
        if isinstance(node, dict):
            part = str(part)
        elif isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise ConfigError(
                    [
                        f"override {override!r}: {here}: no such list entry (the list has "
                        f"{len(node)} entries, indexed from 0)"
                    ]
                )
        else:
            parent = _path_text(parts[:position])
            raise ConfigError(
                [f"override {override!r}: {parent} is {_describe(node)}, not a mapping"]
            )
        schema = _child_schema(schema, part)
        if last:
            node[part] = value
        elif isinstance(node, dict) and node.get(part) is None:
            node[part] = [] if typing.get_origin(schema) is list else {}
            node = node[part]
        else:
            node = node[part]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``"dotted.path=value"`` applied (value parsed as YAML).

    Paths follow the schema: a key that no section defines is an error naming it, list entries
    are addressed by index (``terms.0.weight=0.5``) and must exist, free-form mappings
    (``kwargs``, ``loss_kwargs``) accept new keys.

    Example:
        >>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=5", "train.amp=bf16"])
        {'train': {'epochs': 5, 'amp': 'bf16'}}
    """
    copied = copy.deepcopy(data)
    for override in overrides:
        parts, value = _split_override(override)
        _set_path(copied, parts, value, override)
    return copied


def write_resolved_config(recipe: Recipe | dict[str, Any], run_dir: str | Path) -> Path:
    """Write the validated recipe (defaults filled in) to ``run_dir/config.yaml``."""
    data = recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -------------------------------------------------------------------------------- building


@contextmanager
def _blame(path: str) -> Iterator[None]:
    """Re-raise a registry or constructor error as a :class:`ConfigError` naming ``path``."""
    try:
        yield
    except (KeyError, ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        if isinstance(error, ConfigError):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ConfigError([f"{path}: {message}"]) from error


def _model_factory(name: str) -> Any:
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    from torchkd.models import create_model

    return lambda **kwargs: create_model(name, **kwargs)


def build_model(spec: ModelConfig, path: str = "student") -> nn.Module:
    """Instantiate ``spec.model`` with ``spec.kwargs`` and load ``spec.checkpoint`` if given.

    ``model`` is a registered name (:func:`torchkd.models.create_model`) or ``"package.module:
    Class"`` for your own ``nn.Module``. ``checkpoint`` is a ``.safetensors`` file, a torchkd
    training checkpoint (its student weights are used) or a ``torch.save``-d state dict.
    """
    from torchkd.train.checkpoint import load_student_weights

    with _blame(f"{path}.model"):
        model = _model_factory(spec.model)(**spec.kwargs)
    if spec.checkpoint is not None:
        with _blame(f"{path}.checkpoint"):
            weights = load_student_weights(spec.checkpoint)
            try:
                model.load_state_dict(weights)
            except RuntimeError as error:
                raise ValueError(
                    f"the weights in {spec.checkpoint} do not fit model {spec.model!r} with "
                    f"kwargs {spec.kwargs}: {error}"
                ) from error
    return model


def build_loaders(data: DataConfig, seed: int = 0) -> Loaders:
    """Train/validation/test loaders; with ``data.transfer`` the transfer set is the train set.

    The training loader shuffles with a ``torch.Generator`` seeded by ``seed``; the trainer
    reseeds it every epoch from ``(seed, epoch)``.
    """
    import torch

    from torchkd.data import Loaders, create_dataset, make_loaders
    from torchkd.data.batching import Augment, batch_loader

    augment = None if data.augment is None else Augment(shift=data.augment.shift)
    split_kwargs = {"val_fraction": data.val_fraction, "split_seed": data.seed, **data.kwargs}
    with _blame("data"):
        labeled = make_loaders(
            data.dataset,
            batch_size=data.batch_size,
            seed=seed,
            eval_batch_size=data.eval_batch_size,
            num_workers=data.num_workers,
            augment=augment,
            **split_kwargs,
        )
    if data.transfer is None:
        return labeled
    transfer = data.transfer
    with _blame("data.transfer"):
        transfer_set = create_dataset(
            transfer.dataset,
            "train",
            num_samples=transfer.num_samples,
            seed=transfer.seed,
            **transfer.kwargs,
        )
    has_labels = "labels" in transfer_set[0]
    if transfer.labeled and not has_labels:
        raise ConfigError(
            [
                f"data.transfer.labeled: dataset {transfer.dataset!r} yields no labels; "
                "set labeled: false for label-free distillation"
            ]
        )
    if has_labels and not transfer.labeled:
        transfer_set = _WithoutLabels(transfer_set)
    train = batch_loader(
        transfer_set,
        data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=data.num_workers,
        augment=augment,
    )
    return Loaders(train=train, val=labeled.val, test=labeled.test)


class _WithoutLabels:
    """A view of a dict dataset that drops ``"labels"`` (an honest label-free transfer set)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """A sample, or a batch for a sequence of indices (whatever the dataset answers)."""
        return {k: v for k, v in self.dataset[position].items() if k != "labels"}


def _schedule_value(value: Any, path: str) -> Any:
    """A number or a literal passes through; a schedule mapping becomes a schedule object."""
    if not isinstance(value, dict):
        return float(value) if _is_number(value) else value
    from torchkd import schedules

    options = {key: item for key, item in value.items() if key != "name"}
    with _blame(path):
        return schedules.create(value["name"], **options)


def build_terms(recipe: Recipe) -> list[Term]:
    """The :class:`~torchkd.distiller.Term` list of ``recipe.terms`` (losses checked by name)."""
    from torchkd import losses
    from torchkd.distiller import Term

    terms = []
    for index, spec in enumerate(recipe.terms):
        with _blame(f"terms.{index}.loss"):
            losses.entry(spec.loss)
        with _blame(f"terms.{index}.loss_kwargs"):
            losses.create(spec.loss, **spec.loss_kwargs)
        terms.append(
            Term(
                name=spec.name,
                loss=spec.loss,
                loss_kwargs=dict(spec.loss_kwargs),
                weight=_schedule_value(spec.weight, f"terms.{index}.weight"),
                student=spec.student,
                teacher=spec.teacher,
                adapter=spec.adapter,
                temperature=_schedule_value(spec.temperature, f"terms.{index}.temperature"),
                teacher_index=spec.teacher_index,
            )
        )
    return terms


def build_distiller(recipe: Recipe) -> Distiller:
    """Student, teachers (frozen by the Distiller) and terms of ``recipe`` as a Distiller."""
    from torchkd.distiller import Distiller

    student = build_model(recipe.student, "student")
    teacher_paths = (
        ["teacher"]
        if recipe.teacher
        else [f"teachers.{i}" for i in range(len(recipe.teacher_configs))]
    )
    teachers = [
        build_model(spec, where)
        for spec, where in zip(recipe.teacher_configs, teacher_paths, strict=True)
    ]
    terms = build_terms(recipe)
    with _blame("terms"):
        return Distiller(student, teachers or None, terms, output_key=recipe.output_key)


class Built(NamedTuple):
    """What :func:`build_from_recipe` returns (unpacks as a tuple)."""

    distiller: Distiller
    loaders: Loaders
    train_config: TrainConfig


def build_from_recipe(recipe: Recipe) -> Built:
    """Seed with ``recipe.train.seed``, then build the distiller, the loaders and the config.

    Seeding first makes the models' initial weights a function of the recipe.
    """
    from torchkd.train.rng import seed_everything

    seed_everything(recipe.train.seed)
    distiller = build_distiller(recipe)
    loaders = build_loaders(recipe.data, seed=recipe.train.seed)
    return Built(distiller, loaders, recipe.train)


def fit_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    resume: bool = False,
    evaluate_test: bool = True,
    report: bool = True,
    progress: bool | None = None,
) -> FitResult:
    """Build everything a recipe names and train it with :func:`torchkd.train.fit`.

    The one path from a validated recipe to a trained run (CLI ``train``, the demo, the tuner's
    final retrain). ``evaluate_test=False`` never touches the test split; ``progress`` overrides
    ``train.progress``. The resolved recipe is written to the run directory and checkpoints.
    """
    from torchkd.train import fit

    built = build_from_recipe(recipe)
    train_config = built.train_config
    if progress is not None:
        train_config = train_config.model_copy(update={"progress": progress})
    return fit(
        built.distiller,
        built.loaders.train,
        built.loaders.val,
        train_config,
        run_dir,
        resume=resume,
        test_loader=built.loaders.test if evaluate_test else None,
        resolved_config=recipe.model_dump(mode="json"),
        report=report,
    )
