"""A recipe's teacher server (``teacher: {server: URL}``,
:class:`~torchkd.config.server_schema.TeacherServerConfig`): :func:`teacher_server_client`, the
checks and the client that training makes of it before anything runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchkd.config.build_terms import teacher_model_terms
from torchkd.config.errors import ConfigError
from torchkd.config.server_schema import TeacherServerConfig
from torchkd.config.teacher_cache import cache_temperature

if TYPE_CHECKING:
    from torchkd.config.schema import Recipe
    from torchkd.lm.server import TeacherServerClient

__all__ = ["teacher_server_client"]


def teacher_server_client(recipe: Recipe) -> TeacherServerClient | None:
    """The client of the recipe's teacher server, its settings checked against the recipe's
    (None when ``teacher:`` is no server).

    Raises:
        ConfigError: a term reads a teacher model (not ``teacher: cache``), the recipe also
            has ``data.teacher_cache``, or its teacher has its own tokenizer
            (``data.kwargs.teacher_tokenizer``; naming the YAML paths).
        TeacherServerError: the server is unreachable, or serves other settings or another
            teacher than the recipe expects (naming ``teacher.server`` and both values).
    """
    from torchkd.lm.server import TeacherServerClient

    spec = recipe.teacher
    if not isinstance(spec, TeacherServerConfig):
        return None
    if recipe.data.teacher_cache is not None:
        raise ConfigError(
            [
                "data.teacher_cache: the teacher server (teacher.server) answers the batches' "
                "teacher; drop data.teacher_cache, or give teacher: a model"
            ]
        )
    if recipe.data.kwargs.get("teacher_tokenizer"):
        raise ConfigError(
            [
                "data.kwargs.teacher_tokenizer: a teacher server (teacher.server) answers for "
                "the student's tokens; a teacher with its own tokenizer is not served: write "
                "its cache (`torchkd cache-teacher RECIPE`, data.teacher_cache) or give "
                "teacher: a model"
            ]
        )
    for index in teacher_model_terms(recipe):
        raise ConfigError(
            [
                f"terms.{index}.teacher: a teacher server (teacher.server) answers the teacher's "
                f"top-k or sampled distribution, read with teacher: cache, not "
                f"{recipe.terms[index].teacher!r}"
            ]
        )
    expected = {
        "teacher_fingerprint": spec.fingerprint,
        "kind": spec.kind,
        "k": spec.k,
        "samples": spec.samples,
        "seed": spec.seed,
        "temperature": cache_temperature(recipe),
    }
    client = TeacherServerClient(spec.server, expected, timeout=spec.timeout, retries=spec.retries)
    client.settings()
    return client
