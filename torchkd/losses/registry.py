"""The loss registry: one name -> (functional form, module class, how it is called).

``create(name, **kwargs)`` builds the module; ``available()`` lists the names. Every registered
loss is picked up by the test template in ``tests/losses/`` the day it is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

# How a loss is called, so generic code (tests, the Distiller) can feed it:
#   "labels"         f(student_logits, labels)                          hard labels, no teacher
#   "logits"         f(student_logits, teacher_logits)
#   "logits_labels"  f(student_logits, teacher_logits, labels)          labels required
#   "multi_teacher"  f(student_logits, [teacher_logits, ...], labels=None)
#   "features"       f(student_feature, teacher_feature)                one tensor each side
#   "feature_lists"  f([student_features], [teacher_features])          lists of layer outputs
#   "embeddings"     f(student_embedding [B, D], teacher_embedding [B, D'])
#   "indexed"        f(student_embedding, teacher_embedding, index, contrast_index=None)
#   "hidden_states"  f(student_hidden [..., Hs], student_weight [V, Hs],
#                      teacher_hidden [..., Ht], teacher_weight [V, Ht], labels=None)
#                    token-level losses fused with the output projection (logits never built)
Signature = Literal[
    "labels",
    "logits",
    "logits_labels",
    "multi_teacher",
    "features",
    "feature_lists",
    "embeddings",
    "indexed",
    "hidden_states",
]


@dataclass(frozen=True)
class LossEntry:
    """One registered loss."""

    name: str
    functional: Callable[..., object] | None
    module: type[nn.Module]
    signature: Signature
    family: Literal["logit", "feature", "relation"]


_REGISTRY: dict[str, LossEntry] = {}


def register(
    name: str,
    *,
    module: type[nn.Module],
    functional: Callable[..., object] | None,
    signature: Signature,
    family: Literal["logit", "feature", "relation"],
) -> None:
    """Register a loss under ``name``. Registering the same name twice is an error."""
    if name in _REGISTRY:
        raise ValueError(f"loss {name!r} is already registered")
    _REGISTRY[name] = LossEntry(name, functional, module, signature, family)


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return KeyError(f"unknown loss {name!r}{hint} (available: {', '.join(available())})")


def entry(name: str) -> LossEntry:
    """The :class:`LossEntry` registered under ``name``."""
    if name not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[name]


def create(name: str | nn.Module, **kwargs: object) -> nn.Module:
    """Build the loss module registered under ``name`` (a module passes through unchanged).

    Example:
        >>> import torchkd.losses as L
        >>> L.create("kd", temperature=4.0)
        KDLoss(temperature=4.0, reduction='batchmean')
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a loss name, not a module")
        return name
    return entry(name).module(**kwargs)


def available(family: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally of one family."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)
