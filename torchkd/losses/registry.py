"""The loss registry: one name -> (functional form, module class, how it is called, and what
the Distiller must know to build it).

Losses register at their definition with the :func:`register` decorator on the module class::

    @register("hint", functional=hint_loss, signature="features", family="feature")
    class HintLoss(nn.Module): ...

``create(name, **kwargs)`` builds the module; ``available()`` lists the names; ``entry(name)``
returns the :class:`LossEntry`. Every registered loss is picked up by the test template in
``tests/losses/`` the day it is registered, and a loss registered from outside torchkd is used
by the :class:`~torchkd.distiller.Distiller` exactly like a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from torch import nn

from torchkd._registry import Registry

__all__ = [
    "LossEntry",
    "Shapes",
    "Signature",
    "SizeRule",
    "available",
    "create",
    "entry",
    "register",
]

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
#   "self_exits"     f([exit_logits], [exit_features], final_logits, final_features, labels)
#                    a network's early exits taught by its own deepest exit (no teacher model)
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
    "self_exits",
]
Family = Literal["logit", "feature", "relation", "token"]  # token: fused with the projection

# Probed tensor shapes of one side of a term, batch first (student shapes after adapters).
Shapes = list[tuple[int, ...]]
# Constructor sizes computed from the probed shapes: (student_shapes, teacher_shapes) -> kwargs.
SizeRule = Callable[[Shapes, Shapes], dict[str, Any]]

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


@dataclass(frozen=True)
class LossEntry:
    """One registered loss.

    Attributes:
        name: the registered name.
        functional: the function form (``None`` for losses that own trainable parts).
        module: the ``nn.Module`` class.
        signature: how the loss is called (see :data:`Signature`).
        family: ``logit``, ``feature``, ``relation`` or ``token`` (token-level losses fused
            with the output projection).
        compares_shapes: the loss compares student and teacher tensors of different shapes
            itself, so the Distiller builds no adapter for it by default.
        sizes: constructor keyword arguments computed from the probed shapes (the user's own
            ``loss_kwargs`` win), or ``None``.
    """

    name: str
    functional: Callable[..., object] | None
    module: type[nn.Module]
    signature: Signature
    family: Family
    compares_shapes: bool = False
    sizes: SizeRule | None = None


LOSSES: Registry[LossEntry] = Registry(
    "loss", wrap=lambda name, module, **details: LossEntry(name=name, module=module, **details)
)


def register(
    name: str,
    *,
    functional: Callable[..., object] | None,
    signature: Signature,
    family: Family,
    compares_shapes: bool = False,
    sizes: SizeRule | None = None,
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: register the loss module under ``name`` (twice is an error).

    Args:
        name: the loss name used in recipes and :func:`create`.
        functional: the function form, or ``None``.
        signature: how the loss is called (see :data:`Signature`).
        family: ``logit``, ``feature``, ``relation`` or ``token`` (token-level losses fused
            with the output projection).
        compares_shapes: see :class:`LossEntry`.
        sizes: see :class:`LossEntry`.

    Example:
        >>> import torch
        >>> @register("doc_l1", functional=None, signature="features", family="feature")
        ... class L1Loss(nn.Module):
        ...     def forward(self, student, teacher):
        ...         return (student - teacher).abs().mean()
        >>> entry("doc_l1").signature
        'features'
    """
    if signature not in Signature.__args__:  # type: ignore[attr-defined]
        raise ValueError(f"signature must be one of {Signature.__args__}, got {signature!r}")  # type: ignore[attr-defined]
    return LOSSES.register(
        name,
        functional=functional,
        signature=signature,
        family=family,
        compares_shapes=compares_shapes,
        sizes=sizes,
    )


def entry(name: str) -> LossEntry:
    """The :class:`LossEntry` registered under ``name``."""
    return LOSSES.entry(name)


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
    return LOSSES.available(None if family is None else lambda e: e.family == family)
