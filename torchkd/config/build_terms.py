"""The loss terms, the on-policy sampler and the Distiller of a recipe, and the YAML path of a
:class:`~torchkd.distiller.TermError`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchkd.config.arguments import check_arguments
from torchkd.config.build_models import build_model, check_teacher_weights
from torchkd.config.cross_tokenizer import cross_tokenizer_kwargs, teacher_inputs_key
from torchkd.config.errors import ConfigError, blame
from torchkd.config.schema import ModelConfig, OnPolicyConfig, Recipe, is_number
from torchkd.config.vocabulary import check_vocabulary
from torchkd.terms import CACHE

if TYPE_CHECKING:
    from torchkd.distiller import Distiller, Term
    from torchkd.lm.on_policy import OnPolicy

__all__ = [
    "build_distiller",
    "build_on_policy",
    "build_term",
    "build_terms",
    "reads_teacher_models",
    "teacher_model_terms",
    "term_path",
]


def _schedule_value(value: Any, path: str) -> Any:
    """A number or a literal passes through; a schedule mapping becomes a schedule object."""
    if not isinstance(value, dict):
        return float(value) if is_number(value) else value
    from torchkd import schedules

    options = {key: item for key, item in value.items() if key != "name"}
    with blame(path):
        return schedules.create(value["name"], **options)


def build_terms(recipe: Recipe) -> list[Term]:
    """The :class:`~torchkd.distiller.Term` list of ``recipe.terms`` (see :func:`build_term`);
    each loss is built once, by :meth:`Distiller.build`."""
    return [build_term(recipe, index) for index in range(len(recipe.terms))]


def build_term(recipe: Recipe, index: int) -> Term:
    """Term ``index`` of ``recipe.terms`` as the Distiller receives it: its loss name and
    argument names are checked, and a schedule mapping becomes a schedule object."""
    from torchkd import losses
    from torchkd.distiller import Term

    spec = recipe.terms[index]
    with blame(f"terms.{index}.loss"):
        module = losses.entry(spec.loss).module
    check_arguments(module, spec.loss_kwargs, f"terms.{index}.loss_kwargs")
    return Term(
        name=spec.name,
        loss=spec.loss,
        loss_kwargs={**cross_tokenizer_kwargs(recipe, index), **spec.loss_kwargs},
        weight=_schedule_value(spec.weight, f"terms.{index}.weight"),
        student=spec.student,
        teacher=spec.teacher,
        adapter=spec.adapter,
        temperature=_schedule_value(spec.temperature, f"terms.{index}.temperature"),
        teacher_index=spec.teacher_index,
        global_batch=spec.global_batch,
    )


def build_distiller(recipe: Recipe) -> Distiller:
    """Student, teachers (frozen by the Distiller) and terms of ``recipe`` as a Distiller."""
    from torchkd.distiller import Distiller

    student = build_model(recipe.student, "student")
    teacher_paths = (
        ["teacher"]
        if isinstance(recipe.teacher, ModelConfig)
        else [f"teachers.{i}" for i in range(len(recipe.teacher_configs))]
    )
    built_teachers = []
    if reads_teacher_models(recipe):
        for spec, where in zip(recipe.teacher_configs, teacher_paths, strict=True):
            check_teacher_weights(spec, where)
            built_teachers.append((build_model(spec, where), spec, where))
    check_vocabulary(recipe, [(student, recipe.student, "student"), *built_teachers])
    teachers = [teacher for teacher, _, _ in built_teachers]
    from torchkd.distiller import TermError

    terms = build_terms(recipe)
    on_policy = None
    if recipe.on_policy is not None:
        on_policy = build_on_policy(recipe.on_policy, recipe.train.seed)
    try:
        return Distiller(
            student,
            teachers or None,
            terms,
            output_key=recipe.output_key,
            teacher_inputs_key=teacher_inputs_key(recipe) or recipe.data.teacher_inputs,
            on_policy=on_policy,
        )
    except TermError as error:
        raise ConfigError([f"{term_path(recipe, error)}: {error}"]) from error


def reads_teacher_models(recipe: Recipe) -> bool:
    """Whether a term (or on-policy sampling) runs the teachers: a recipe whose teacher-reading
    terms all read the teacher cache trains with no teacher model in memory (its ``teacher:``
    is what ``torchkd cache-teacher`` runs)."""
    return recipe.on_policy is not None or bool(teacher_model_terms(recipe))


def teacher_model_terms(recipe: Recipe) -> list[int]:
    """The indices of the terms that read a teacher model: not the teacher cache
    (``teacher: cache``), not the labels alone."""
    from torchkd import losses

    return [
        index
        for index, term in enumerate(recipe.terms)
        if term.teacher != CACHE
        and (term.loss not in losses.available() or losses.entry(term.loss).signature != "labels")
    ]


def build_on_policy(spec: OnPolicyConfig, default_seed: int = 0) -> OnPolicy:
    """The :class:`~torchkd.lm.on_policy.OnPolicy` of a recipe's ``on_policy:`` section; its seed
    defaults to ``default_seed`` (the recipe's ``train.seed``)."""
    from torchkd.lm.on_policy import OnPolicy

    options = spec.model_dump()
    if options["seed"] is None:
        options["seed"] = default_seed
    with blame("on_policy"):
        return OnPolicy(**options)


def term_path(recipe: Recipe, error: Any) -> str:
    """``terms.N[.field[.argument]]`` of a :class:`~torchkd.distiller.TermError`."""
    index = next(i for i, term in enumerate(recipe.terms) if term.name == error.term)
    path = f"terms.{index}"
    message = str(error).removeprefix(f"term {error.term!r}: ")
    named = [key for key in recipe.terms[index].loss_kwargs if message.startswith(key)]
    if error.field in ("", "loss_kwargs") and named:
        return f"{path}.loss_kwargs.{named[0]}"
    return f"{path}.{error.field}" if error.field else path
