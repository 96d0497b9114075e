"""The call convention of in-network self-distillation, where the student is its own teacher::

    "self_exits"  f([exit_logits], [exit_features], final_logits, final_features, labels)

The term's ``student`` lists ``2K + 1`` tap paths of the student: its ``K`` shallow exits'
logits, their ``K`` features, then the deepest features; the deepest logits are the student's
own (``teacher: logits``, the default, which here names the student's output, not a teacher
model). For :class:`torchkd.models.CNN1DExits`::

    student: [exit1, exit2, exit1.bottleneck, exit2.bottleneck, flatten]
"""

from __future__ import annotations

from typing import Any

from torchkd.calls.base import Call, Example, Owner, student_value
from torchkd.terms import LOGITS, Term

__all__ = ["SelfExitsCall"]


class SelfExitsCall(Call):
    signature = "self_exits"
    reads_teacher = False
    lists = True
    student_slots = (0, 1)
    teacher_slots = (2, 3)

    def check(self, term: Term, owner: Owner) -> None:
        where = f"term {term.name!r}"
        if len(term.student) < 3 or len(term.student) % 2 == 0 or LOGITS in term.student:
            raise ValueError(
                f"{where}: student must list 2K + 1 tap paths (K >= 1): the K early exits' "
                "logits, their K features, then the deepest features (e.g. [exit1, exit2, "
                f"exit1.bottleneck, exit2.bottleneck, flatten]), got {term.student!r}"
            )
        if term.teacher != LOGITS:
            raise ValueError(
                f"{where}: 'self_exits' losses are taught by the student's own logits (the "
                f"deepest exit); leave teacher as 'logits', got {term.teacher!r}"
            )

    def arguments(self, term, capture, batch, owner, temperature):
        values = student_value(term.student, capture, term)
        exits = len(values) // 2
        args = [
            values[:exits],
            values[exits:-1],
            capture.student_logits,
            values[-1],
            self.batch_entry(batch, owner.labels_key, term),
        ]
        return args, {} if temperature is None else {"temperature": temperature}

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        batch, classes = example.batch, example.classes
        exit_logits = [example.randn(batch, classes) for _ in range(2)]
        exit_features = [example.randn(batch, 3, 2) for _ in range(2)]
        return (
            exit_logits,
            exit_features,
            example.randn(batch, classes),
            example.randn(batch, 3, 2),
            example.labels(),
        )
