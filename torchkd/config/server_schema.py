"""The ``teacher: {server: URL}`` section of a recipe (:class:`TeacherServerConfig`); what
training does with it is :mod:`torchkd.config.teacher_server`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from torchkd.train.config import NonNegativeInt, PositiveFloat, PositiveInt, Section

__all__ = ["TeacherServerConfig"]


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
