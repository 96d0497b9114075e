"""Refusing input together under ``torchrun``: when one process refuses (a damaged file only it
reads, such as its own ``trainer.rank<R>.pt``), every process raises at the same point, so no
process is left waiting in a collective for one that has gone (gloo's "Connection closed by
peer"), and the run stops with one message.
"""

from __future__ import annotations

import torch.distributed as dist

from torchkd.errors import InputError

__all__ = ["refuse_together"]


def refuse_together(refusal: InputError | None) -> None:
    """Raise on every process when any process refused; a collective in a process group.

    Every process calls it with its own refusal, or ``None``. A refusing process raises its
    own error; the others raise an :class:`~torchkd.errors.InputError` with the message of the
    lowest refusing rank, so rank 0, which reports, prints that message. Without a process
    group, ``refusal`` is raised when given.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if refusal is not None:
            raise refusal
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if refusal is None else str(refusal))
    if refusal is not None:
        raise refusal
    first = next((message for message in messages if message is not None), None)
    if first is not None:
        raise InputError(first)
