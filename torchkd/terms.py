"""What a :class:`~torchkd.distiller.Distiller` is made of and gives back: :class:`Term` (one
weighted loss term), :class:`DistillOutput`, the learned :class:`UncertaintyWeight`, the errors
that name a term (:class:`TermError`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal

import torch
from torch import Tensor, nn

from torchkd import losses
from torchkd.adapters import AdapterKind
from torchkd.losses.registry import Signature
from torchkd.schedules import Schedule

__all__ = [
    "CACHE",
    "LOGITS",
    "DistillOutput",
    "Term",
    "TermError",
    "UncertaintyWeight",
    "blame_term",
    "fixed_temperature",
    "term_error",
]

LOGITS = "logits"  # a term's student/teacher value meaning the model's output logits
CACHE = "cache"  # a term's teacher value meaning the batch's cached top-k teacher distribution


class TermError(ValueError):
    """A problem with one :class:`Term`: ``term`` is its name, ``field`` the attribute at fault
    (``"loss_kwargs"``, ``"student"``, ``"teacher"``, ``"temperature"``, ``"weight"``, ...;
    ``""`` for the term as a whole), so a recipe can name the YAML path."""

    def __init__(self, term: str, field: str, message: str) -> None:
        super().__init__(message)
        self.term = term
        self.field = field


@contextmanager
def blame_term(term: Term, field: str = "") -> Iterator[None]:
    """Re-raise an error about ``term`` as a :class:`TermError` naming it and ``field``."""
    try:
        yield
    except TermError:
        raise
    except (ValueError, TypeError, KeyError) as error:
        raise term_error(term, field, error) from error


def term_error(term: Term, field: str, error: Exception) -> TermError:
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if not message.startswith("term "):
        message = f"term {term.name!r}: {message}"
    return TermError(term.name, field, message)


@dataclass
class Term:
    """One weighted loss term of a :class:`Distiller`.

    Attributes:
        name: key of the term in :attr:`DistillOutput.terms` and in :attr:`Distiller.extras`
            (a valid module name: no ``"."``).
        loss: a registered loss name (``torchkd.losses.available()``), or a loss module or
            callable (then give ``signature``, or give the object a ``signature`` attribute).
        loss_kwargs: keyword arguments for ``torchkd.losses.create(loss, **loss_kwargs)``;
            constructor sizes a loss declares at registration (``LossEntry.sizes``) are filled
            in from the probed shapes by :meth:`Distiller.build`.
        weight: a number, a :class:`~torchkd.schedules.Schedule` of training progress, or
            ``"auto"`` (uncertainty weighting, Kendall et al. 2018).
        student: ``"logits"`` (the student's output logits) or a tapped module path; a list of
            them for ``"feature_lists"`` losses. For ``"hidden_states"`` losses ``"logits"``
            means the causal LM's final hidden state and output projection (logits never built).
        teacher: the same on the teacher side; or ``"cache"`` (``"hidden_states"`` losses only):
            the teacher's cached top-k distribution in the batch (``teacher_topk_ids``,
            ``teacher_topk_log_probs``, ``teacher_topk_tail``) or its sampled tokens
            (``teacher_sample_ids``, ``teacher_sample_counts``, ``teacher_entropy``), no
            teacher model run.
        adapter: how student tensors are mapped to the teacher's shape (see
            :func:`torchkd.adapters.build_adapter`); only for feature, embedding and indexed
            losses. ``"auto"`` builds nothing for losses that compare shapes themselves.
        temperature: ``None`` (the loss's own), a number or a schedule evaluated every step,
            ``"learned"`` (a global CTKD :class:`~torchkd.schedules.LearnableTemperature`), or
            a temperature module called as ``module(student_logits, teacher_logits)`` (e.g. an
            instance-wise one). The value is passed to the loss call as ``temperature=`` (the
            registered logit losses take it and use it instead of their own for that call).
            Give a temperature here or in ``loss_kwargs``, not both. ``"hidden_states"`` losses
            take a number or a schedule only.
        teacher_index: which teacher the term reads (all teachers for ``"multi_teacher"``).
        signature: how a custom loss is called; must agree with a registered loss's signature.
        global_batch: in a distributed run (``torchrun``), compute the term in training on the
            global batch: the (adapted) student and the teacher tensors of every process are
            gathered (:func:`torchkd.losses.distributed.gather_rows_with_grad`) before the
            loss is called. For losses that couple the samples of a batch (SP, RKD, CC, PKT,
            ``crd_inbatch``, DIST's intra-class term); off, they see each process's share.
            Only for ``logits``, ``features``, ``feature_lists`` and ``embeddings`` losses; a
            no-op on one process.
    """

    name: str
    loss: str | nn.Module | Callable[..., Tensor]
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    weight: float | Schedule | Literal["auto"] = 1.0
    student: str | list[str] = LOGITS
    teacher: str | list[str] = LOGITS
    adapter: AdapterKind = "auto"
    temperature: float | Schedule | Literal["learned"] | nn.Module | None = None
    teacher_index: int = 0
    signature: Signature | None = None
    global_batch: bool = False


def fixed_temperature(term: Term) -> tuple[float, str]:
    """The one temperature ``term`` computes at, every step, and the :class:`Term` field that
    sets it, by the rule a :class:`~torchkd.distiller.Distiller` calls the loss by:

    1. ``term.temperature``, a number: the Distiller passes it to every call as
       ``temperature=``, which overrides the loss's own;
    2. else ``loss_kwargs["temperature"]``, which the loss is built with (field
       ``"loss_kwargs.temperature"``);
    3. else the registered loss's default ``temperature`` argument, or 1 for a loss without one
       (field ``"temperature"``, the one to set).

    What reads teacher outputs precomputed at one temperature (the teacher cache,
    :func:`torchkd.config.cache_temperature`) uses this rule, so it cannot drift from the
    Distiller's.

    Example:
        >>> fixed_temperature(Term("kd", "kd", loss_kwargs={"temperature": 4}))
        (4.0, 'loss_kwargs.temperature')
        >>> fixed_temperature(Term("kd", "kd", temperature=2.0))
        (2.0, 'temperature')

    Raises:
        TermError: (field ``"temperature"``) the temperature is a schedule, ``"learned"`` or a
            module, so it has no fixed value; (field ``"loss"``) the loss is a module or
            callable, whose own temperature torchkd does not know.
    """
    if term.temperature is not None:
        if not _is_number(term.temperature):
            raise TermError(
                term.name,
                "temperature",
                f"term {term.name!r}: temperature {term.temperature!r} is not a fixed number "
                "(a schedule, 'learned' or a module varies)",
            )
        return float(term.temperature), "temperature"
    if "temperature" in term.loss_kwargs:
        return float(term.loss_kwargs["temperature"]), "loss_kwargs.temperature"
    if not isinstance(term.loss, str):
        raise TermError(
            term.name,
            "loss",
            f"term {term.name!r}: the temperature of loss {term.loss!r} is its own; give "
            "Term.temperature to fix it",
        )
    with blame_term(term, "loss"):
        default = inspect.signature(losses.entry(term.loss).module).parameters.get("temperature")
    if default is None or not _is_number(default.default):
        return 1.0, "temperature"
    return float(default.default), "temperature"


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@dataclass
class DistillOutput:
    """What one :meth:`Distiller.forward` returns.

    Attributes:
        loss: the weighted total; call ``backward()`` on it.
        terms: each term's unweighted value (attached to the graph).
        weights: each term's weight at this step (``exp(-s_i)`` for ``"auto"`` terms).
        student_logits: the student's output logits (attached to the graph); None when no
            term read them (a causal LM whose terms read only hidden states: its body ran alone).
        teacher_logits: each teacher's output logits (no graph); None for a teacher whose
            logits no term read.
        temperatures: the temperature passed to each term that sets one (the mean for
            per-row temperatures).
        num_samples: the batch's rows (samples, or sequences of a token batch).
    """

    loss: Tensor
    terms: dict[str, Tensor]
    weights: dict[str, float]
    student_logits: Tensor | None
    teacher_logits: list[Tensor | None]
    temperatures: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0


class UncertaintyWeight(nn.Module):
    """Learned homoscedastic-uncertainty weight of one loss (Kendall et al., CVPR 2018).

    .. math::

        \\tilde{\\mathcal{L}} = e^{-s}\\,\\mathcal{L} + s, \\qquad s = \\log \\sigma^2

    ``s`` starts at 0 (weight 1). Minimizing over ``s`` gives :math:`e^{-s} = 1/\\mathcal{L}`,
    so terms with larger losses are weighted down.

    Example:
        >>> import torch
        >>> weighting = UncertaintyWeight()
        >>> weighting(torch.tensor(2.0))
        tensor(2., grad_fn=<AddBackward0>)
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_variance = nn.Parameter(torch.zeros(()))

    def weight(self) -> Tensor:
        """The effective weight :math:`e^{-s}`."""
        return torch.exp(-self.log_variance)

    def forward(self, loss: Tensor) -> Tensor:
        return self.weight() * loss + self.log_variance
