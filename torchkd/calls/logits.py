"""Call conventions of the losses on output logits::

    "labels"         f(student_logits, labels)                          hard labels, no teacher
    "logits"         f(student_logits, teacher_logits)
    "logits_labels"  f(student_logits, teacher_logits, labels)          labels required
    "multi_teacher"  f(student_logits, [teacher_logits, ...], labels=None)

Every one but ``"labels"`` takes the term's temperature as ``temperature=``. On token logits
``[B, L, V]`` each reads only the positions with a valid label and is normalized by the batch's
:class:`~torchkd.lm.TokenNormalizer` (:mod:`torchkd.calls.tokens`).

A batch whose teacher has its own tokenizer carries the alignment
(:data:`~torchkd.lm.aligned.TEACHER_POSITIONS`): a ``"logits_labels"`` loss that compares
vocabularies itself (``compares_shapes``: ``uld``, ``hybrid_uld``) then gets the aligned rows
``[n, V_S]``, ``[n, V_T]``, ``[n]`` (:func:`~torchkd.lm.aligned.aligned_rows`); any other
teacher-reading logit loss (``multi_teacher`` included) is refused, since it would compare
positions one to one.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from torchkd import losses
from torchkd.calls.base import Example, Owner, student_value, teacher_value
from torchkd.calls.tokens import TokenRowsCall
from torchkd.capture import Capture
from torchkd.lm.aligned import TEACHER_POSITIONS, aligned_rows
from torchkd.terms import LOGITS, Term, TermError

__all__ = ["LabelsCall", "LogitsCall", "LogitsLabelsCall", "MultiTeacherCall"]


def _temperature_kwargs(temperature: float | Tensor | None) -> dict[str, Any]:
    return {} if temperature is None else {"temperature": temperature}


def compares_classes(term: Term) -> bool:
    """Whether the term's loss (a registered name) compares logits of different class counts
    itself (``compares_shapes``, e.g. ULD across vocabularies)."""
    return (
        isinstance(term.loss, str)
        and ":" not in term.loss
        and losses.entry(term.loss).compares_shapes
    )


def unaligned_error(term: Term, signature: str) -> TermError:
    """The refusal of a loss that compares a student and a teacher position by position when
    the batch's teacher has its own tokenizer."""
    return TermError(
        term.name,
        "loss",
        f"term {term.name!r}: the batch's teacher reads its own tokens "
        f"(batch[{TEACHER_POSITIONS!r}] aligns them with the student's), but loss "
        f"{term.loss!r} (signature {signature!r}) compares the two sides position by position "
        "and vocabulary entry by entry; use a loss that compares vocabularies: 'uld', "
        "'hybrid_uld' or 'fused_linear_uld'",
    )


class LabelsCall(TokenRowsCall):
    signature = "labels"
    reads_teacher = False
    teacher_slots = ()

    def check(self, term: Term, owner: Owner) -> None:
        if term.temperature is not None:
            raise ValueError(
                f"term {term.name!r}: a temperature needs a teacher; 'labels' losses have none"
            )

    def arguments(self, term, capture, batch, owner, temperature):
        student = student_value(term.student, capture, term)
        return [student, self.batch_entry(batch, owner.labels_key, term)], {}

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        student = example.randn(*example.rows, example.classes)
        return (student, example.labels())


class LogitsCall(TokenRowsCall):
    signature = "logits"
    gathers = True

    def build(self, term: Term, capture: Capture, owner: Owner) -> tuple[nn.ModuleDict, dict]:
        same_classes = not compares_classes(term)
        if (
            same_classes
            and term.student == LOGITS
            and (self.all_teachers or term.teacher == LOGITS)
        ):
            student_classes = capture.student_logits.shape[-1]
            for index in self.teacher_indices(term, len(owner.teachers)):
                teacher_classes = capture.teacher_logits[index].shape[-1]
                if teacher_classes != student_classes:
                    raise TermError(
                        term.name,
                        "",
                        f"term {term.name!r}: the student's logits have {student_classes} "
                        f"classes but teacher {index}'s have {teacher_classes}; give both "
                        "models the same number of classes (e.g. their num_classes argument)",
                    )
        return super().build(term, capture, owner)

    def arguments(self, term, capture, batch, owner, temperature):
        if batch.get(TEACHER_POSITIONS) is not None and not (
            self.signature == "logits_labels" and compares_classes(term)
        ):
            raise unaligned_error(term, self.signature)
        args = [
            student_value(term.student, capture, term),
            teacher_value(term, capture, term.teacher_index),
        ]
        return args, _temperature_kwargs(temperature)

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        shape = (*example.rows, example.classes)
        student = example.randn(*shape)
        example.labels()  # drawn for every logit signature: the same values for each
        return (student, example.randn(*shape))


class LogitsLabelsCall(LogitsCall):
    signature = "logits_labels"
    gathers = False

    def arguments(self, term, capture, batch, owner, temperature):
        args, kwargs = super().arguments(term, capture, batch, owner, temperature)
        labels = self.batch_entry(batch, owner.labels_key, term)
        positions = batch.get(TEACHER_POSITIONS)
        if positions is not None:
            student, teacher, labels = aligned_rows(*args, labels, positions)
            args = [student, teacher]
        return [*args, labels], kwargs

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        shape = (*example.rows, example.classes)
        student, labels = example.randn(*shape), example.labels()
        return (student, example.randn(*shape), labels)


class MultiTeacherCall(LogitsCall):
    signature = "multi_teacher"
    all_teachers = True
    gathers = False

    def arguments(self, term, capture, batch, owner, temperature):
        if batch.get(TEACHER_POSITIONS) is not None:
            raise unaligned_error(term, self.signature)
        student = student_value(term.student, capture, term)
        teachers = [teacher_value(term, capture, i) for i in range(len(owner.teachers))]
        kwargs = {**_temperature_kwargs(temperature), "labels": batch.get(owner.labels_key)}
        return [student, teachers], kwargs

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        shape = (*example.rows, example.classes)
        student, labels = example.randn(*shape), example.labels()
        return (student, [example.randn(*shape) for _ in range(example.teachers)], labels)
