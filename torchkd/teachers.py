"""Frozen teachers: freezing, a container that stays in eval mode, ensembles.

A teacher is any ``nn.Module``. Frozen means ``eval()`` (dropout off, BatchNorm on its running
statistics) and ``requires_grad_(False)``; its forward runs under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchkd.forward import call_model, select_logits

__all__ = [
    "TeacherEnsemble",
    "TeacherList",
    "as_teacher_list",
    "freeze",
    "teacher_outputs",
]


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to its parameters; returns ``model``.

    Example:
        >>> from torch import nn
        >>> teacher = freeze(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5)))
        >>> teacher.training, any(p.requires_grad for p in teacher.parameters())
        (False, False)
    """
    model.eval()
    model.requires_grad_(False)
    return model


class TeacherList(nn.ModuleList):
    """A ``ModuleList`` of frozen teachers that stays in eval mode.

    ``train(True)`` on it, or on any module that holds it (the :class:`~torchkd.distiller.
    Distiller`), leaves the teachers in eval mode, so switching the student to training never
    turns on a teacher's dropout or BatchNorm updates. Teachers are frozen on construction.

    Example:
        >>> from torch import nn
        >>> holder = nn.Module()
        >>> holder.teachers = TeacherList([nn.Dropout(0.5)])
        >>> holder.train().teachers[0].training
        False
    """

    def __init__(self, teachers: Sequence[nn.Module] = ()) -> None:
        super().__init__([freeze(teacher) for teacher in teachers])

    def train(self, mode: bool = True) -> TeacherList:
        return super().train(False)


def as_teacher_list(teachers: nn.Module | Sequence[nn.Module] | None) -> TeacherList:
    """``None`` -> no teachers; one module -> one teacher; a sequence -> those teachers.

    An ``nn.ModuleList``/``nn.Sequential`` passed as *one* module counts as one teacher only if
    it is an ``nn.Sequential`` (a network); a plain ``nn.ModuleList`` is a list of teachers.
    """
    if teachers is None:
        return TeacherList()
    if isinstance(teachers, nn.ModuleList) or not isinstance(teachers, nn.Module):
        members = list(teachers)
        for position, member in enumerate(members):
            if not isinstance(member, nn.Module):
                raise TypeError(
                    f"teachers[{position}] must be an nn.Module, got {type(member).__name__}"
                )
        return TeacherList(members)
    return TeacherList([teachers])


def teacher_outputs(teachers: Sequence[nn.Module], inputs: Any) -> list[Any]:
    """Every teacher's raw output for ``inputs``, computed under ``torch.no_grad()``."""
    with torch.no_grad():
        return [call_model(teacher, inputs) for teacher in teachers]


class TeacherEnsemble(nn.Module):
    """Several frozen teachers acting as one: a weighted mean of their logits.

    .. math::

        z = \\sum_k w_k z_k, \\qquad \\sum_k w_k = 1

    With equal weights, :math:`\\mathrm{softmax}(z/T)` is the normalized geometric mean of the
    members' softened distributions, one of the two ensemble targets of Hinton et al.,
    "Distilling the Knowledge in a Neural Network" (2015).

    Args:
        members: the teachers (frozen on construction; they stay in eval mode).
        weights: one non-negative weight per member, normalized to sum to 1; default equal.
        output_key: how to find logits in each member's output (see :func:`select_logits`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> first, second = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> ensemble = TeacherEnsemble([first, second])
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(ensemble(x), (first(x) + second(x)) / 2)
        True
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        weights: Sequence[float] | None = None,
        output_key: str | int | None = None,
    ) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("a TeacherEnsemble needs at least one member")
        if weights is None:
            weights = [1.0] * len(members)
        if len(weights) != len(members):
            raise ValueError(f"got {len(weights)} weights for {len(members)} ensemble members")
        if any(not weight >= 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be >= 0 with a positive sum, got {weights}")
        self.members = TeacherList(members)
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]))
        self.output_key = output_key

    def forward(self, inputs: Any) -> Tensor:
        outputs = teacher_outputs(self.members, inputs)
        logits = [select_logits(output, self.output_key) for output in outputs]
        shapes = {tuple(member_logits.shape) for member_logits in logits}
        if len(shapes) > 1:
            raise ValueError(f"ensemble members gave logits of different shapes: {sorted(shapes)}")
        stacked = torch.stack(logits)
        weights = self.weights.to(stacked.dtype).reshape(-1, *[1] * (stacked.dim() - 1))
        return (weights * stacked).sum(dim=0)
