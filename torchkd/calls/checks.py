"""The checks of a :class:`~torchkd.terms.Term` every call convention shares (which teachers
exist, paths or lists of paths, adapters, temperature, ``global_batch``), then the
convention's own (:meth:`~torchkd.calls.base.Call.check`); and the term's loss, built and
checked to take the term's temperature (:func:`term_loss`)."""

from __future__ import annotations

import inspect
import numbers
import typing
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from torchkd import losses
from torchkd.adapters import ADAPTER_KINDS
from torchkd.calls.base import Call, Owner
from torchkd.calls.features import adapter_kind
from torchkd.calls.table import CALLS, call_for
from torchkd.losses.registry import Signature
from torchkd.terms import CACHE, Term, TermError

__all__ = ["checked_call", "term_loss"]

SIGNATURES: tuple[str, ...] = typing.get_args(Signature)


def checked_call(term: Term, owner: Owner) -> Call:
    """The call convention of ``term``'s loss, once the term passed every check."""
    where = f"term {term.name!r}"
    signature = _resolve_signature(term)
    call = call_for(signature)
    if term.teacher == CACHE and not call.reads_cache:
        raise ValueError(
            f"{where}: teacher='cache' (the batch's cached top-k teacher distribution) feeds "
            f"'hidden_states' losses such as 'fused_linear_kd', not {signature!r} losses"
        )
    if call.reads_teacher and term.teacher != CACHE:
        if not owner.teachers:
            raise ValueError(f"{where} (signature {signature!r}) needs a teacher; none was given")
        if not call.all_teachers and not (0 <= term.teacher_index < len(owner.teachers)):
            raise ValueError(
                f"{where}: teacher_index={term.teacher_index} out of range for "
                f"{len(owner.teachers)} teacher(s)"
            )
    for side in ("student", "teacher"):
        spec = getattr(term, side)
        # a list of teacher paths needs a teacher ('self_exits': the student's own logits)
        lists = call.lists and (side == "student" or call.reads_teacher)
        if lists != isinstance(spec, list) or (lists and not spec):
            expected = "a non-empty list of paths" if lists else "one path or 'logits'"
            raise ValueError(f"{where}: {side} must be {expected} for {signature!r} losses")
    paired = call.lists and call.reads_teacher
    if paired and len(term.student) != len(term.teacher) and adapter_kind(term) != "none":
        raise ValueError(
            f"{where}: {len(term.student)} student paths but {len(term.teacher)} teacher "
            "paths; adapters pair them up (adapter='none' leaves the pairing to the loss)"
        )
    if term.adapter not in ADAPTER_KINDS:
        raise ValueError(f"{where}: adapter must be one of {ADAPTER_KINDS}, got {term.adapter!r}")
    if not call.adapts and term.adapter not in ("auto", "none"):
        raise ValueError(f"{where}: adapters apply to feature terms, not {signature!r} losses")
    if term.temperature is not None and "temperature" in term.loss_kwargs:
        raise ValueError(
            f"{where}: temperature is given twice, as Term.temperature={term.temperature!r} "
            f"and loss_kwargs['temperature']={term.loss_kwargs['temperature']!r}; keep one"
        )
    if term.global_batch and not call.gathers:
        gathered = tuple(name for name, other in CALLS.items() if other.gathers)
        raise ValueError(
            f"{where}: global_batch gathers the batch of {gathered} losses; "
            f"a {signature!r} loss averages over samples, so every process's share suffices"
        )
    if isinstance(term.temperature, numbers.Real) and not term.temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {term.temperature}")
    call.check(term, owner)
    return call


def _resolve_signature(term: Term) -> str:
    if isinstance(term.loss, str):
        registered = losses.entry(term.loss).signature
        if term.signature not in (None, registered):
            raise ValueError(
                f"term {term.name!r}: loss {term.loss!r} has signature {registered!r}, "
                f"not {term.signature!r}"
            )
        return registered
    if not callable(term.loss):
        raise TypeError(
            f"term {term.name!r}: loss must be a registered name, a module or a callable, "
            f"got {type(term.loss).__name__}"
        )
    if term.loss_kwargs:
        raise ValueError(f"term {term.name!r}: loss_kwargs are only used with a loss name")
    signature = term.signature or getattr(term.loss, "signature", None)
    if signature not in SIGNATURES:
        raise ValueError(
            f"term {term.name!r}: a custom loss needs signature= one of {SIGNATURES}, "
            f"got {signature!r}"
        )
    return signature


def term_loss(term: Term, kwargs: dict[str, Any]) -> Callable[..., Tensor]:
    """The term's loss: its module or callable, or the registered loss built with ``kwargs``
    (the term's ``loss_kwargs`` completed by the call convention); one that cannot take the
    term's ``temperature=`` is refused."""
    loss = term.loss
    if isinstance(loss, str):
        try:
            loss = losses.create(loss, **kwargs)
        except (TypeError, ValueError) as error:
            raise TermError(
                term.name,
                "loss_kwargs",
                f"term {term.name!r}: cannot build loss {term.loss!r} with {kwargs}: {error}",
            ) from error
    if term.temperature is not None and not _takes_temperature(loss):
        raise TermError(
            term.name,
            "temperature",
            f"term {term.name!r}: temperature={term.temperature!r} needs a loss whose call "
            f"takes `temperature=`; {type(loss).__name__} does not",
        )
    return loss


def _takes_temperature(loss: Callable[..., Tensor]) -> bool:
    """Whether ``loss`` (its ``forward`` for a module) takes a ``temperature=`` keyword."""
    function = loss.forward if isinstance(loss, nn.Module) else loss
    parameters = inspect.signature(function).parameters.values()
    return any(
        p.name == "temperature" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
    )
