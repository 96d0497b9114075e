"""The call convention of token-level losses fused with the output projection::

    "hidden_states"  f(student_hidden [..., Hs], student_weight [V, Hs],
                       teacher_hidden [..., Ht], teacher_weight [V, Ht], labels=None,
                       num_items_in_batch=None, temperature=..., <side>_bias=...,
                       <side>_logit_scale=..., <side>_softcap=...)

The term's ``student`` and ``teacher`` stay ``"logits"``: each causal LM's final hidden state
and output projection (:func:`torchkd.lm.output_projection`) are read instead of logits, which
are never built. ``teacher="cache"`` passes the batch's cached teacher (top-k,
:class:`~torchkd.losses.topk.TopKLogits`, or sampled, :class:`~torchkd.losses.SampledLogits`)
as ``teacher_logits=`` and runs no teacher. The loss reads
the tokens whose label is not ``-100`` and whose ``attention_mask`` is 1 (the labels passed are
:func:`torchkd.lm.read_labels`), and a batch's :class:`~torchkd.lm.TokenNormalizer`
(``batch["token_normalizer"]``, set by the training loop) gives ``num_items_in_batch`` its
divisor.

A batch whose teacher has its own tokenizer (:data:`~torchkd.lm.aligned.TEACHER_POSITIONS`)
gives a loss that compares vocabularies (``compares_shapes``: ``fused_linear_uld``) the
aligned hidden rows ``[n, H_S]``, ``[n, H_T]`` and labels ``[n]``, or with ``teacher="cache"``
the student's rows ``[n, H_S]``, labels ``[n]`` and cached top-k rows ``[n, k]`` where the
alignment compares a position (the cache is in the student's layout); other fused losses are
refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from torchkd.calls.base import Call, Example, Owner, loss_name
from torchkd.calls.logits import compares_classes, unaligned_error
from torchkd.calls.tokens import token_normalizer
from torchkd.lm.aligned import TEACHER_POSITIONS, aligned_rows, compared_rows
from torchkd.lm.cache.format import CACHE_KEYS, SAMPLED_KEYS
from torchkd.lm.cache.read import cached_targets
from torchkd.lm.model import OutputProjection, is_causal_lm, output_projection
from torchkd.lm.tokens import read_labels
from torchkd.losses import SampledLogits, TopKLogits
from torchkd.terms import CACHE, LOGITS, Term, TermError

__all__ = ["HiddenStatesCall", "cached_teacher"]


def _projection_kwargs(side: str, projection: OutputProjection) -> dict[str, Any]:
    """The output bias, logit scale and softcap of one side, where the model has them."""
    kwargs: dict[str, Any] = {}
    if projection.bias is not None:
        kwargs[f"{side}_bias"] = projection.bias
    if projection.logit_scale != 1.0:
        kwargs[f"{side}_logit_scale"] = projection.logit_scale
    if projection.softcap is not None:
        kwargs[f"{side}_softcap"] = projection.softcap
    return kwargs


def cached_teacher(batch: Mapping[str, Any], term: Term) -> TopKLogits | SampledLogits:
    """The batch's cached teacher, top-k or sampled (see ``torchkd.lm.cache``)."""
    targets = cached_targets(batch)
    if targets is None:
        raise ValueError(
            f"term {term.name!r} reads the cached teacher (teacher='cache') but the batch has "
            f"neither {list(CACHE_KEYS[:2])} nor {list(SAMPLED_KEYS)} (keys: {list(batch)}); "
            "wrap the dataset in a teacher cache (recipe data.teacher_cache, written by "
            "`torchkd cache-teacher RECIPE`)"
        )
    return targets


class HiddenStatesCall(Call):
    signature = "hidden_states"
    reads_hidden = True
    reads_cache = True
    token_rows = True
    student_slots = (0, 1)
    teacher_slots = (2, 3)
    row_slots = (0, 2, 4)

    def check(self, term: Term, owner: Owner) -> None:
        where = f"term {term.name!r} (loss {loss_name(term)}, signature 'hidden_states')"
        if term.student != LOGITS or term.teacher not in (LOGITS, CACHE):
            raise ValueError(
                f"{where}: reads each model's final hidden state and output projection: keep "
                f"student='logits' and teacher='logits' (or teacher='cache'), got "
                f"student={term.student!r}, teacher={term.teacher!r}; compare inner layers "
                "with a feature loss such as 'hint'"
            )
        if term.temperature == "learned" or isinstance(term.temperature, nn.Module):
            raise TermError(
                term.name,
                "temperature",
                f"{where}: the fused loss takes a float temperature (a number or a schedule), "
                f"not a learned or module temperature ({term.temperature!r}): those need the "
                "full logits the fused loss never builds",
            )
        models = [("student", owner.student)]
        if term.teacher != CACHE:
            models.append(("teacher", owner.teachers[term.teacher_index]))
        for side, model in models:
            if not is_causal_lm(model):
                raise TermError(
                    term.name,
                    side,
                    f"{where}: the {side} must be a causal language model with get_decoder() "
                    "and get_output_embeddings() (a transformers *ForCausalLM, e.g. "
                    f"model: hf_causal_lm), got {type(model).__name__}",
                )

    def reads_logits(self, term: Term, side: str) -> bool:
        return False

    def arguments(self, term, capture, batch, owner, temperature):
        labels = self.batch_entry(batch, owner.labels_key, term)
        kwargs: dict[str, Any] = {"labels": read_labels(labels, capture.attention_mask)}
        normalizer = token_normalizer(batch)
        if normalizer is not None:
            kwargs["num_items_in_batch"] = normalizer.divisor
        if temperature is not None:
            kwargs["temperature"] = float(temperature)
        student = output_projection(owner.student, "the student")
        kwargs.update(_projection_kwargs("student", student))
        positions = batch.get(TEACHER_POSITIONS)
        if positions is not None and not compares_classes(term):
            raise unaligned_error(term, self.signature)
        if term.teacher == CACHE:
            cached = cached_teacher(batch, term)
            student_hidden = capture.student_hidden
            # the cache is in the student's layout (a sampled one is refused by the loss)
            if positions is not None and isinstance(cached, TopKLogits):
                student_hidden, kwargs["labels"], *parts = compared_rows(
                    positions,
                    student_hidden,
                    kwargs["labels"],
                    cached.token_ids,
                    cached.log_probs,
                    cached.tail_log_mass,
                )
                cached = TopKLogits(*parts)
            kwargs["teacher_logits"] = cached
            return [student_hidden, student.weight], kwargs
        index = term.teacher_index
        teacher = output_projection(owner.teachers[index], f"teacher {index}")
        kwargs.update(_projection_kwargs("teacher", teacher))
        student_hidden, hidden = capture.student_hidden, capture.teacher_hidden[index]
        if positions is not None:
            student_hidden, hidden, kwargs["labels"] = aligned_rows(
                student_hidden, hidden, kwargs["labels"], positions
            )
        return [student_hidden, student.weight, hidden, teacher.weight], kwargs

    def example_inputs(self, example: Example) -> tuple[Any, ...]:
        labels = example.labels()
        student = (
            example.randn(*example.rows, example.student_hidden),
            example.randn(example.classes, example.student_hidden),
        )
        teacher = (
            example.randn(*example.rows, example.teacher_hidden),
            example.randn(example.classes, example.teacher_hidden),
        )
        return (*student, *teacher, labels)
