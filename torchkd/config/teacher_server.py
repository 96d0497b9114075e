"""A recipe's teacher server (``teacher: {server: URL}``): :class:`TeacherServerConfig`, and
:func:`teacher_server_client`, the checks and the client that training makes of it before
anything runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from torchkd.train.config import NonNegativeInt, PositiveFloat, PositiveInt, Section

if TYPE_CHECKING:
    from torchkd.config.schema import Recipe
    from torchkd.lm.server import TeacherServerClient

__all__ = ["TeacherServerConfig", "teacher_server_client"]


class TeacherServerConfig(Section):
    """``teacher: {server: URL}``: the teacher runs in another process, ``torchkd
    serve-teacher RECIPE`` (:mod:`torchkd.lm.server`), which answers every training and
    validation batch with what a teacher cache of it stores (top-k or sampled, at the
    temperature of the terms that read it, ``teacher: cache``): a run against the server
    equals one against that cache.

    The server's settings are checked before training starts, and its every answer: its
    temperature must be that of the terms reading it, and each setting given here must be the
    server's.

    Attributes:
        server: ``http://HOST:PORT`` as ``torchkd serve-teacher`` prints it.
        kind: ``topk`` or ``sampled`` (null: the server's).
        k: tokens per position, or a sampled teacher's exact head (null: the server's).
        samples: draws per position of a sampled teacher (null: the server's).
        seed: the seed of a sampled teacher's draws (null: the server's).
        fingerprint: the teacher's SHA-256 (``teacher_fingerprint`` in a cache's manifest
            and the server's settings; null: any teacher).
        timeout: seconds to wait for an answer.
        retries: more attempts after a request that got no answer (waiting 0.5 s, 1 s, ...).
    """

    server: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]
    kind: Literal["topk", "sampled"] | None = None
    k: PositiveInt | None = None
    samples: PositiveInt | None = None
    seed: NonNegativeInt | None = None
    fingerprint: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    timeout: PositiveFloat = 60.0
    retries: NonNegativeInt = 3


def teacher_server_client(recipe: Recipe) -> TeacherServerClient | None:
    """The client of the recipe's teacher server, its settings checked against the recipe's
    (None when ``teacher:`` is no server).

    Raises:
        ConfigError: a term reads a teacher model (not ``teacher: cache``), or the recipe
            also has ``data.teacher_cache`` (naming the YAML paths).
        TeacherServerError: the server is unreachable, or serves other settings or another
            teacher than the recipe expects (naming ``teacher.server`` and both values).
    """
    from torchkd.config.build_terms import teacher_model_terms
    from torchkd.config.errors import ConfigError
    from torchkd.config.teacher_cache import cache_temperature
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
