"""What a loss's call convention (its registered signature) must say, so the
:class:`~torchkd.distiller.Distiller` can run any term without knowing the signature: which
teachers and batch entries the term reads, what the models must keep of a forward pass, what to
build at :meth:`~torchkd.distiller.Distiller.build` (shape adapters, loss sizes) and how to turn
a forward pass's :class:`~torchkd.capture.Capture` and the batch into the loss's arguments.
The same object makes example inputs of the signature for the loss tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from torchkd.capture import Capture
from torchkd.terms import CACHE, LOGITS, Term

__all__ = ["Call", "Example", "Owner", "loss_name", "student_value", "teacher_value"]


class Owner(Protocol):
    """What a call reads of the Distiller that runs it."""

    student: nn.Module
    teachers: Sequence[nn.Module]
    labels_key: str
    extras: nn.ModuleDict
    training: bool


@dataclass(frozen=True)
class Example:
    """Draws example inputs of a signature (the loss tests' inputs): a ``[B]`` row layout or a
    ``[B, L]`` token layout, ``classes`` logits per row, ``teachers`` teachers, a dataset of
    ``num_data`` samples (indexed losses), hidden sizes of a fused student and teacher."""

    generator: torch.Generator
    dtype: torch.dtype = torch.float64
    scale: float = 2.0
    layout: str = "rows"
    batch: int = 4
    classes: int = 5
    length: int = 3
    teachers: int = 3
    num_data: int = 16
    student_hidden: int = 6
    teacher_hidden: int = 7

    @property
    def rows(self) -> tuple[int, ...]:
        return (self.batch, self.length) if self.layout == "tokens" else (self.batch,)

    def randn(self, *shape: int) -> Tensor:
        """Standard normal values times ``scale``, drawn in float64 (the same values for
        every dtype)."""
        values = torch.randn(*shape, generator=self.generator, dtype=torch.float64) * self.scale
        return values.to(self.dtype)

    def labels(self) -> Tensor:
        return torch.randint(0, self.classes, self.rows, generator=self.generator)


class Call:
    """The call convention of one signature (subclasses set the facts and override the steps).

    Attributes:
        signature: the registered signature (``torchkd.losses.registry.Signature``).
        reads_teacher: the loss compares with a teacher (``"labels"`` losses do not).
        all_teachers: the loss reads every teacher (``teacher_index`` is ignored).
        lists: the term's ``student`` and ``teacher`` are lists of paths.
        adapts: student tensors pass through shape adapters built from the probed shapes.
        gathers: ``Term.global_batch`` may gather the loss's tensors over processes.
        masks: ``[B, L, ...]`` tensors keep the positions whose ``attention_mask`` is 1.
        reads_hidden: the loss reads causal LMs' final hidden states and output projections.
        reads_cache: ``teacher="cache"`` may replace the teacher (the batch's top-k).
        token_rows: the loss takes ``[B, L, ...]`` token rows as well as ``[B, ...]`` rows.
        student_slots, teacher_slots: positions of each side's tensors in the arguments.
        row_slots: positions of the arguments whose leading dimensions are the rows (None: all).
    """

    signature: ClassVar[str]
    reads_teacher: ClassVar[bool] = True
    all_teachers: ClassVar[bool] = False
    lists: ClassVar[bool] = False
    adapts: ClassVar[bool] = False
    gathers: ClassVar[bool] = False
    masks: ClassVar[bool] = False
    reads_hidden: ClassVar[bool] = False
    reads_cache: ClassVar[bool] = False
    token_rows: ClassVar[bool] = False
    student_slots: ClassVar[tuple[int, ...]] = (0,)
    teacher_slots: ClassVar[tuple[int, ...]] = (1,)
    row_slots: ClassVar[tuple[int, ...] | None] = None

    def check(self, term: Term, owner: Owner) -> None:
        """Refuse what this convention cannot run (after the checks every convention shares,
        which are the Distiller's)."""

    def teacher_indices(self, term: Term, num_teachers: int) -> Sequence[int]:
        """The teachers the term reads."""
        if not self.reads_teacher or term.teacher == CACHE:
            return []
        return range(num_teachers) if self.all_teachers else [term.teacher_index]

    def reads_logits(self, term: Term, side: str) -> bool:
        """Whether the term reads ``side``'s output logits (else a causal LM may run its body
        alone)."""
        spec = getattr(term, side)
        return LOGITS in (spec if isinstance(spec, list) else [spec]) or isinstance(
            term.temperature, nn.Module
        )

    def build(self, term: Term, capture: Capture, owner: Owner) -> tuple[nn.ModuleDict, dict]:
        """The term's parts built from a probe pass (adapters) and the loss's keyword
        arguments (the term's ``loss_kwargs``, completed by the loss's size rule)."""
        return nn.ModuleDict(), dict(term.loss_kwargs)

    def arguments(
        self,
        term: Term,
        capture: Capture,
        batch: Mapping[str, Any],
        owner: Owner,
        temperature: float | Tensor | None,
    ) -> tuple[list[Any], dict[str, Any]]:
        """The loss's positional and keyword arguments for one forward pass."""
        raise NotImplementedError

    def value(
        self,
        term: Term,
        capture: Capture,
        batch: Mapping[str, Any],
        owner: Owner,
        temperature: float | Tensor | None,
        loss: Callable[..., Tensor],
    ) -> Tensor:
        """The term's loss for one forward pass: ``loss(*args, **kwargs)`` of
        :meth:`arguments` (token-row conventions also normalize it, :mod:`torchkd.calls.tokens`)."""
        args, kwargs = self.arguments(term, capture, batch, owner, temperature)
        return loss(*args, **kwargs)

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        """Positional example inputs of this signature (the loss tests' inputs)."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared by the conventions
    def batch_entry(self, batch: Mapping[str, Any], key: str, term: Term) -> Tensor:
        """``batch[key]``, or a ValueError naming the term, its loss and the batch's keys."""
        if batch.get(key) is None:
            raise ValueError(
                f"term {term.name!r} (loss {loss_name(term)}, signature {self.signature!r}) "
                f"needs batch[{key!r}], but the batch has none (keys: {list(batch)}); "
                "unlabeled batches can only feed terms that need no labels"
            )
        return batch[key]


def loss_name(term: Term) -> str:
    return repr(term.loss) if isinstance(term.loss, str) else type(term.loss).__name__


def tensor_at(value: Any, path: str, side: str, term: Term) -> Tensor:
    """A tapped output, which must be a tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"term {term.name!r}: the {side} output at {path!r} is a {type(value).__name__}, "
            "not a tensor; tap a submodule whose output is a tensor"
        )
    return value


def student_value(spec: str | list[str], capture: Capture, term: Term) -> Any:
    """The student's logits or tapped output(s) a term names."""
    if isinstance(spec, list):
        return [student_value(path, capture, term) for path in spec]
    if spec == LOGITS:
        return capture.student_logits
    return tensor_at(capture.student_taps[spec], spec, "student", term)


def teacher_value(term: Term, capture: Capture, index: int) -> Any:
    """Teacher ``index``'s logits or tapped output(s) a term names."""
    specs = term.teacher if isinstance(term.teacher, list) else [term.teacher]
    values = [
        capture.teacher_logits[index]
        if spec == LOGITS
        else tensor_at(capture.teacher_taps[index][spec], spec, f"teacher {index}", term)
        for spec in specs
    ]
    return values if isinstance(term.teacher, list) else values[0]
