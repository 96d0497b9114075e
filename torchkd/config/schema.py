"""The recipe schema (pydantic): one class per YAML section.

A recipe names everything by registry name plus keyword arguments::

    name: kd_mnist1d
    data: {dataset: mnist1d, batch_size: 128}
    teacher: {model: cnn1d, kwargs: {width: 64}, checkpoint: runs/teacher/checkpoints/best.pt}
    student: {model: cnn1d, kwargs: {width: 6}}
    terms:
      - {name: kd, loss: kd, loss_kwargs: {temperature: 4.0}, weight: 0.9}
      - {name: ce, loss: ce, weight: 0.1}
    train: {epochs: 20, optimizer: {name: adamw, lr: 0.003}}

Sections forbid unknown keys; the ``train:`` section is the engine's own
(:mod:`torchkd.train.config`), ``tune:`` the search's (:mod:`torchkd.config.tune_schema`).
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, model_validator

from torchkd.config.server_schema import TeacherServerConfig
from torchkd.config.synthetic_schema import SyntheticConfig
from torchkd.config.tune_schema import TuneConfig
from torchkd.terms import CACHE
from torchkd.train.config import (
    Float,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "OnPolicyConfig",
    "Recipe",
    "TeacherCacheConfig",
    "TeacherServerConfig",
    "TermConfig",
    "TransferConfig",
    "is_number",
]


def _check_schedule_mapping(spec: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(spec.get("name"), str):
        raise ValueError(
            "a schedule mapping needs a string 'name' (e.g. {name: exponential, start: 0.9}), "
            f"got keys {sorted(map(str, spec))}"
        )
    return spec


ScheduleMapping = Annotated[dict[str, Any], AfterValidator(_check_schedule_mapping)]


def is_number(value: Any) -> bool:
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
        if is_number(value):
            return "number"
        if isinstance(value, dict):
            return "schedule"
        if value in literals:
            return value
        return None

    return kind


Weight = Annotated[
    Annotated[NonNegativeFloat, Tag("number")]
    | Annotated[Literal["auto"], Tag("auto")]
    | Annotated[ScheduleMapping, Tag("schedule")],
    Discriminator(
        _kind_of("auto"),
        custom_error_type="weight_spec",
        custom_error_message="expected a number >= 0, 'auto' or a schedule mapping like "
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
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(Section):
    """``data.augment:``: training-time augmentation (the training loader only).

    Each training batch is augmented with a generator seeded from the training loader's
    generator, so the augmentation is reproducible and resumes exactly.

    Attributes:
        shift: random circular shift of each input by up to this many positions along its
            last axis (``torchkd.data.batching.random_circular_shift``); 0: none.
    """

    shift: NonNegativeInt = 0


CACHE_SIZE_DEFAULTS = {"k": 16, "samples": 12}  # data.teacher_cache's k / samples by kind


class TeacherCacheConfig(Section):
    """``data.teacher_cache:``: train from a cached sparse teacher (``torchkd cache-teacher``).

    The training and validation splits are read with the teacher's top-k log-probabilities of
    every position, or tokens sampled from it (:class:`torchkd.lm.cache.TeacherCacheDataset`),
    for the terms whose ``teacher`` is ``cache``; the cache's temperature is theirs (a cache
    written at another temperature, or of another kind, is refused).

    Attributes:
        dir: the cache directory (the training split's cache; the validation split's is in
            ``dir/val``).
        kind: ``topk`` (default: the ``k`` most likely tokens and the tail mass) or ``sampled``
            (``samples`` tokens drawn from the teacher: an unbiased estimate of forward KL and
            its gradient, :mod:`torchkd.losses.sampled`; forward-KL terms only).
        k: tokens kept per position of a ``topk`` cache (default 16; 66 bytes per token at
            k = 16 for vocabularies up to 65,535 entries, 98 above); for a ``sampled`` cache
            the optional exact head (top-k plus samples combined: the ``k`` most likely
            tokens kept exactly, the samples drawn from the rest).
        samples: draws per position of a ``sampled`` cache (default 12; 40 bytes per token at
            12 for vocabularies up to 65,535 entries, 64 above).
        seed: the seed of a ``sampled`` cache's draws.
    """

    dir: str
    kind: Literal["topk", "sampled"] = "topk"
    k: PositiveInt | None = None
    samples: PositiveInt | None = None
    seed: NonNegativeInt = 0

    @model_validator(mode="before")
    @classmethod
    def _size_of_its_kind(cls, data: Any) -> Any:
        """``k`` for a top-k cache (default 16); ``samples`` for a sampled one (default 12),
        with ``k`` its optional exact head."""
        if not isinstance(data, dict):
            return data
        if data.get("kind", "topk") == "sampled":
            return {"samples": CACHE_SIZE_DEFAULTS["samples"], **data}
        if data.get("samples") is not None:
            raise ValueError(
                "samples: is for a kind: sampled cache, but kind is topk; a kind: topk cache "
                "takes k"
            )
        return {"k": CACHE_SIZE_DEFAULTS["k"], **data}


class DataConfig(Section):
    """``data:``: which dataset, how it is split and batched.

    Attributes:
        dataset: registered labeled dataset (``torchkd.data.available_datasets()``); its
            validation and test splits are always used for evaluation.
        kwargs: more dataset arguments (e.g. ``cache``).
        batch_size: training batch size (per micro-batch with gradient accumulation); under
            ``torchrun`` the global batch, split evenly across the processes.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        val_fraction: fraction of the training split held out for validation.
        seed: seed of the train/validation partition (the shuffle order follows
            ``train.seed``).
        num_workers: DataLoader worker processes.
        transfer: optional transfer set replacing the training split.
        augment: training-time augmentation (see :class:`AugmentConfig`).
        teacher_cache: a cached teacher read with the training split (see
            :class:`TeacherCacheConfig`).
        synthetic: inputs synthesized from the teacher replacing the training split
            (data-free distillation, see :class:`~torchkd.config.synthetic_schema.SyntheticConfig`).
        teacher_inputs: the batch entry the teachers read (cross-modal distillation: the same
            samples in another modality, e.g. ``teacher_inputs`` of a dataset that yields
            both); null: the student's ``inputs``.
    """

    dataset: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt | None = None
    val_fraction: Annotated[Float, Field(ge=0, lt=1)] = 0.1
    seed: NonNegativeInt = 0
    num_workers: NonNegativeInt = 0
    transfer: TransferConfig | None = None
    augment: AugmentConfig | None = None
    teacher_cache: TeacherCacheConfig | None = None
    teacher_inputs: Annotated[str, Field(min_length=1)] | None = None
    synthetic: SyntheticConfig | None = None

    @model_validator(mode="after")
    def _one_training_set(self) -> DataConfig:
        if self.synthetic is not None and self.transfer is not None:
            raise ValueError(
                "synthetic: replaces the training split, as data.transfer does; give one of them"
            )
        return self


class ModelConfig(Section):
    """``student:`` / ``teacher:`` / ``teachers: [...]``: a model and optionally its weights.

    Attributes:
        model: a registered name (``torchkd.models.available_models()``) or
            ``"package.module:Class"`` for your own ``nn.Module`` (imported; trust the recipe).
        kwargs: constructor arguments.
        checkpoint: weights to load: ``.safetensors``, a torchkd checkpoint (its student
            weights, e.g. ``runs/teacher/checkpoints/best.pt``) or a saved state dict.
        pretrained: teachers only: the model's constructor loads trained weights itself (e.g.
            ``hf_causal_lm`` with ``path``), so no ``checkpoint`` is needed.
        untrained: teachers only: distil the teacher's random initial weights on purpose
            (tests, smoke runs). A teacher with neither ``checkpoint`` nor one of these is
            refused, since distilling an untrained teacher by mistake wastes a whole run.
    """

    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False
    untrained: bool = False

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        given = [
            name
            for name, value in [
                ("checkpoint", self.checkpoint is not None),
                ("pretrained", self.pretrained),
                ("untrained", self.untrained),
            ]
            if value
        ]
        if len(given) > 1:
            raise ValueError(
                f"{given[-1]}: contradicts {given[0]}; say where a teacher's weights come from "
                "once (checkpoint, pretrained: true or untrained: true)"
            )
        return self


class TermConfig(Section):
    """One entry of ``terms:``, mirroring :class:`torchkd.distiller.Term`.

    Attributes:
        name: the term's name in logs and ``DistillOutput.terms`` (unique).
        loss: a registered loss (``torchkd.losses.available()``).
        loss_kwargs: keyword arguments of the loss.
        weight: a number, ``auto`` (uncertainty weighting) or a schedule mapping
            ``{name: exponential, start: 0.9, rate: 2.0}`` (``torchkd.schedules.create``).
        student: ``logits`` or a dotted module path to tap (a list for feature-list losses).
        teacher: the same on the teacher side, or ``cache``: the teacher's cached top-k
            distribution in the batches (``data.teacher_cache``; ``hidden_states`` losses such
            as ``fused_linear_kd``), no teacher model needed.
        adapter: student-to-teacher shape adapter.
        temperature: ``null`` (the loss's own), a number, ``learned`` (CTKD) or a schedule
            mapping.
        teacher_index: which teacher of ``teachers:`` the term reads (multi-teacher losses
            read all of them).
        global_batch: under ``torchrun``, compute the term on the batch of every process
            (gathered), not on each process's share: for in-batch relation losses (SP, RKD,
            CC, PKT, ``crd_inbatch``, ``dist``); see ``docs/distributed.md``.
    """

    name: str
    loss: str
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    weight: Weight = 1.0
    student: TapPath = "logits"
    teacher: TapPath = "logits"
    adapter: Literal["auto", "conv1x1", "linear", "pool", "none"] = "auto"
    temperature: Temperature | None = None
    teacher_index: NonNegativeInt = 0
    global_batch: bool = False


class OnPolicyConfig(Section):
    """``on_policy:``: on-policy distillation (GKD) or sequence-level KD, mirroring
    :class:`torchkd.lm.on_policy.OnPolicy`.

    Attributes:
        fraction: ``λ``, the probability that a training step's batches are replaced by the
            prompts plus sampled continuations (the loss then covers the generated tokens).
        max_new_tokens: tokens sampled per prompt.
        temperature: sampling temperature (not the loss temperature).
        top_k: sample among the ``top_k`` most likely tokens; null: all of them.
        source: ``student`` (on-policy) or ``teacher`` (sequence-level KD).
        prompt_length: plain-text data: the first ``prompt_length`` tokens are the prompt
            (prompt/completion data brings its own prompts).
        seed: seeds the decisions and samples with the step; null: ``train.seed``.
    """

    fraction: Annotated[Float, Field(ge=0, le=1)]
    max_new_tokens: PositiveInt
    temperature: PositiveFloat = 1.0
    top_k: PositiveInt | None = None
    source: Literal["student", "teacher"] = "student"
    prompt_length: PositiveInt | None = None
    seed: NonNegativeInt | None = None


def _teacher_kind(value: Any) -> str:
    """A ``teacher:`` with ``server`` is a teacher server, anything else a model."""
    served = isinstance(value, dict) and "server" in value
    return "a server" if served or isinstance(value, TeacherServerConfig) else "a model"


TeacherSpec = Annotated[
    Annotated[ModelConfig, Tag("a model")] | Annotated[TeacherServerConfig, Tag("a server")],
    Discriminator(_teacher_kind),
]


class Recipe(Section):
    """A whole recipe. Give ``teacher`` (one, or a teacher server: ``{server: URL}``, see
    :class:`~torchkd.config.server_schema.TeacherServerConfig`) or ``teachers`` (a list), or
    neither.

    ``name`` names the run directory (``runs/<name>/``); ``output_key`` selects the logits in
    model outputs that are tuples or mappings (see :class:`~torchkd.distiller.Distiller`).
    ``generations: N`` (born-again networks, :mod:`torchkd.config.generations`) trains the
    student ``N`` times in a chain, each generation distilled from the previous one's best
    checkpoint; 1 (the default) is a single run.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    data: DataConfig
    student: ModelConfig
    teacher: TeacherSpec | None = None  # a model, or {server: URL} (torchkd serve-teacher)
    teachers: list[ModelConfig] | None = None
    terms: Annotated[list[TermConfig], Field(min_length=1)]
    output_key: str | int | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    on_policy: OnPolicyConfig | None = None
    tune: TuneConfig | None = None  # torchkd tune's search (ignored by torchkd train)
    generations: PositiveInt = 1

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.teacher is not None and self.teachers is not None:
            raise ValueError("teacher, teachers: give one teacher or a list of teachers, not both")
        for flag in ("pretrained", "untrained"):
            if getattr(self.student, flag):
                raise ValueError(
                    f"student.{flag}: applies to teachers only (a student is trained by the run; "
                    "give student.checkpoint to start it from trained weights)"
                )
        names = [term.name for term in self.terms]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"terms: term names must be unique, repeated: {duplicates}")
        if self.on_policy is not None and not self.teacher_configs:
            raise ValueError(
                "on_policy: on-policy distillation needs a teacher to score (or, with source: "
                "teacher, to generate) the sampled tokens; give teacher or teachers"
            )
        if self.on_policy is not None and self.data.teacher_cache is not None:
            raise ValueError(
                "on_policy, data.teacher_cache: the teacher cache holds the teacher's "
                "distributions on the dataset's tokens only, not on sampled ones; drop one"
            )
        cached = [i for i, term in enumerate(self.terms) if term.teacher == CACHE]
        if self.on_policy is not None and cached:
            raise ValueError(
                f"on_policy: terms.{cached[0]} reads the teacher cache, which holds the "
                "teacher's distributions on the dataset's tokens only, not on sampled ones; "
                "score on-policy samples with a teacher model (teacher: logits)"
            )
        if self.data.teacher_inputs is not None and not self.teacher_configs:
            raise ValueError(
                "data.teacher_inputs: names the batch entry the teachers read, but the recipe "
                "has no teacher; give teacher or teachers, or drop it"
            )
        if self.data.teacher_inputs not in (None, "inputs") and self.on_policy is not None:
            raise ValueError(
                "on_policy, data.teacher_inputs: sampled continuations extend the student's "
                "inputs, which teachers reading other inputs cannot score; drop one"
            )
        if self.generations > 1:
            self._check_generations()
        return self

    def _check_generations(self) -> None:
        """A born-again chain replaces ``teacher:`` by the previous generation's student."""
        reason = None
        if self.teacher is None:
            reason = (
                "needs one teacher: for generation 1 (e.g. a trained network of the student's "
                "architecture); later generations are taught by the previous one"
            )
        elif self.student.checkpoint is not None:
            reason = "trains fresh students; drop student.checkpoint"
        elif self.on_policy is not None or self.data.teacher_cache is not None:
            reason = "replaces the teacher model each generation; drop on_policy/teacher_cache"
        elif any(term.teacher == CACHE for term in self.terms):
            reason = "replaces the teacher model each generation; no term may read the cache"
        elif self.data.teacher_inputs not in (None, "inputs"):
            reason = (
                "replaces the teacher by the previous student, which reads the student's "
                "inputs; drop data.teacher_inputs"
            )
        if reason is not None:
            raise ValueError(f"generations: {self.generations} generations {reason}")

    @property
    def teacher_configs(self) -> list[ModelConfig]:
        """The teacher models as a list (empty for a supervised recipe, or a teacher
        server)."""
        if isinstance(self.teacher, ModelConfig):
            return [self.teacher]
        return list(self.teachers or [])
