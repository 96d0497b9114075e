"""Evaluation metrics: top-1, NLL, expected calibration error, teacher–student agreement,
and perplexity for token labels."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import nullcontext
from itertools import zip_longest
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.batch import to_device
from torchkd.forward import call_model, select_logits
from torchkd.lm.aligned import TEACHER_POSITIONS
from torchkd.lm.tokens import IGNORE_INDEX, is_token_labels
from torchkd.train.rng import capture_rng_state, restore_rng_state

NUM_CALIBRATION_BINS = 15


def calibration_bins(
    probabilities: Tensor, labels: Tensor, num_bins: int = NUM_CALIBRATION_BINS
) -> Tensor:
    """Per-bin ``[count, confidence sum, correct count]`` (a ``[num_bins, 3]`` float64 tensor).

    A row's confidence is its largest probability; bin ``b`` holds confidences in
    ``(b / num_bins, (b + 1) / num_bins]``. Bins of several batches add up.

    Example:
        >>> probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
        >>> calibration_bins(probabilities, torch.tensor([0, 1]), num_bins=2).tolist()
        [[0.0, 0.0, 0.0], [2.0, 1.5, 1.0]]
    """
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"probabilities must be [N, C] and labels [N], got {tuple(probabilities.shape)} "
            f"and {tuple(labels.shape)}"
        )
    confidence, predicted = probabilities.double().max(dim=-1)
    correct = (predicted == labels).double()
    bin_index = (confidence * num_bins).ceil().long().clamp(1, num_bins) - 1
    bins = torch.zeros(num_bins, 3, dtype=torch.float64, device=probabilities.device)
    bins[:, 0].index_add_(0, bin_index, torch.ones_like(confidence))
    bins[:, 1].index_add_(0, bin_index, confidence)
    bins[:, 2].index_add_(0, bin_index, correct)
    return bins


def ece_from_bins(bins: Tensor) -> float:
    """Expected calibration error of accumulated :func:`calibration_bins`."""
    total = bins[:, 0].sum()
    if total == 0:
        return float("nan")
    gaps = (bins[:, 2] - bins[:, 1]).abs()  # |correct - confidence| summed per bin
    return float(gaps.sum() / total)


def expected_calibration_error(
    logits: Tensor, labels: Tensor, num_bins: int = NUM_CALIBRATION_BINS
) -> float:
    r"""Expected calibration error of classifier ``logits`` (Guo et al., ICML 2017).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{B} \frac{|S_b|}{N}\,
        \bigl|\mathrm{acc}(S_b) - \mathrm{conf}(S_b)\bigr|

    with :math:`S_b` the samples whose confidence (largest softmax probability) falls in
    bin :math:`b` of :math:`B` equal-width bins over :math:`[0, 1]`.

    Example:
        >>> logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4]]))
        >>> round(expected_calibration_error(logits, torch.tensor([0, 1]), num_bins=2), 4)
        0.25
    """
    return ece_from_bins(calibration_bins(logits.float().softmax(dim=-1), labels, num_bins))


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Percent of rows where student and teacher predict the same class.

    Example:
        >>> agreement(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 1.0]] * 2))
        50.0
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    same = student_logits.argmax(dim=-1) == teacher_logits.argmax(dim=-1)
    return 100.0 * float(same.double().mean())


class _Totals:
    """Running sums over evaluation batches."""

    def __init__(self, num_bins: int) -> None:
        self.num_bins = num_bins
        self.samples = 0
        self.labeled = 0
        self.correct = 0.0
        self.nll = 0.0
        self.bins: Tensor | None = None
        self.compared = 0
        self.agree = 0.0
        self.teacher_correct: list[float] = []
        self.teacher_nll = 0.0
        self.terms: dict[str, float] = {}
        self.token_labels = False

    def add(
        self,
        student_logits: Tensor,
        teacher_logits: list[Tensor],
        labels: Tensor | None,
        terms: Mapping[str, Tensor],
    ) -> None:
        """Add one batch; ``terms`` holds the batch's loss values by name (may be empty)."""
        rows = student_logits.shape[0]
        self.samples += rows
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + float(value) * rows
        # token logits [B, L, V] count every labeled position; IGNORE_INDEX positions are skipped
        num_classes = student_logits.shape[-1]
        student_logits = student_logits.float().reshape(-1, num_classes)
        teacher_logits = [t.float().reshape(-1, num_classes) for t in teacher_logits]
        if labels is not None:
            self.token_labels = self.token_labels or is_token_labels(labels)
            keep = labels.reshape(-1) != IGNORE_INDEX
            labels = labels.reshape(-1)[keep]
            student_logits = student_logits[keep]
            teacher_logits = [t[keep] for t in teacher_logits]
        positions = student_logits.shape[0]
        if positions == 0:
            return
        if teacher_logits:
            teacher_probabilities = torch.stack([t.softmax(-1) for t in teacher_logits])
            self.compared += positions
            self.agree += agreement(student_logits, teacher_probabilities.mean(0)) * positions
        if labels is None:
            return
        self.labeled += positions
        self.correct += float((student_logits.argmax(-1) == labels).sum())
        self.nll += float(F.cross_entropy(student_logits, labels, reduction="sum"))
        bins = calibration_bins(student_logits.softmax(-1), labels, self.num_bins)
        self.bins = bins if self.bins is None else self.bins + bins
        if not self.teacher_correct:
            self.teacher_correct = [0.0] * (len(teacher_logits) + (len(teacher_logits) > 1))
        predictions = [t.argmax(-1) for t in teacher_logits]
        if len(teacher_logits) > 1:
            predictions.append(teacher_probabilities.mean(0).argmax(-1))
        for index, predicted in enumerate(predictions):
            self.teacher_correct[index] += float((predicted == labels).sum())
        if teacher_logits:
            self.teacher_nll += _teacher_nll_sum(teacher_logits, labels)

    def merge(self, other: _Totals) -> None:
        """Add the sums of ``other`` (another process's share of the batches)."""
        for name in ("samples", "labeled", "correct", "nll", "compared", "agree", "teacher_nll"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.bins is not None:
            self.bins = other.bins if self.bins is None else self.bins + other.bins
        pairs = zip_longest(self.teacher_correct, other.teacher_correct, fillvalue=0.0)
        self.teacher_correct = [mine + theirs for mine, theirs in pairs]
        for name, total in other.terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + total
        self.token_labels = self.token_labels or other.token_labels

    def result(self, num_teachers: int) -> dict[str, float]:
        metrics: dict[str, float] = {"samples": float(self.samples)}
        if self.labeled:
            metrics["top1"] = 100.0 * self.correct / self.labeled
            metrics["nll"] = self.nll / self.labeled
            if self.token_labels:
                metrics["perplexity"] = _perplexity(metrics["nll"])
            metrics["ece"] = ece_from_bins(self.bins)
            if num_teachers == 1:
                metrics["teacher_top1"] = 100.0 * self.teacher_correct[0] / self.labeled
            elif num_teachers > 1:
                for index in range(num_teachers):
                    metrics[f"teacher{index}_top1"] = (
                        100.0 * self.teacher_correct[index] / self.labeled
                    )
                metrics["teacher_top1"] = 100.0 * self.teacher_correct[-1] / self.labeled
            if num_teachers:
                metrics["teacher_nll"] = self.teacher_nll / self.labeled
                if self.token_labels:
                    metrics["teacher_perplexity"] = _perplexity(metrics["teacher_nll"])
        if num_teachers and self.compared:
            metrics["agreement"] = self.agree / self.compared  # agreement() is in percent
        for name, total in self.terms.items():
            metrics[name] = total / self.samples
        return metrics


def _perplexity(nll: float) -> float:
    """``exp(nll)``; ``inf`` past 700 (``exp`` overflows a float past ~709.8)."""
    return math.exp(nll) if nll < 700 else math.inf


def _teacher_nll_sum(teacher_logits: list[Tensor], labels: Tensor) -> float:
    r"""Summed NLL of the labels under the teacher (several: the mean of their probabilities):

    .. math::
        -\sum_n \log \frac{1}{K} \sum_{k=1}^{K} \mathrm{softmax}(z^{(k)}_n)_{y_n},

    computed from log-probabilities (``logsumexp``), so a confident teacher's tiny
    probabilities do not underflow to ``log 0``.
    """
    log_probabilities = torch.stack([t.log_softmax(-1) for t in teacher_logits])
    mixed = torch.logsumexp(log_probabilities, dim=0) - math.log(len(teacher_logits))
    return -float(mixed.gather(-1, labels[:, None]).sum())


def autocast_context(device: torch.device, amp: str) -> Any:
    """``torch.autocast`` for ``amp`` in ``"bf16"`` / ``"fp16"``; a no-op for ``"none"``."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Processes(Protocol):
    """The processes of a run that share an evaluation
    (:class:`~torchkd.train.distributed.Parallel`)."""

    rank: int
    world_size: int

    @property
    def sharded(self) -> bool:
        """Whether the model's forward is a collective (FSDP): every process calls it as often."""
        ...

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""
        ...


def _shares(
    loader: Iterable[Mapping[str, Any]], processes: Processes | None
) -> Iterator[tuple[Mapping[str, Any], bool]]:
    """``(batch, counted)``: this process's batches of ``loader`` (batch ``i`` on process
    ``i mod N``), each counted; under FSDP a process with fewer batches than another repeats
    the first batch uncounted, so every process calls the model as often."""
    if processes is None or processes.world_size == 1:
        yield from ((batch, True) for batch in loader)
        return
    world, own, total, first = processes.world_size, 0, 0, None
    for index, batch in enumerate(loader):
        first = batch if first is None else first
        total += 1
        if index % world == processes.rank:
            own += 1
            yield batch, True
    if processes.sharded and first is not None and own < math.ceil(total / world):
        yield first, False


def _is_distiller(model: nn.Module) -> bool:
    return hasattr(model, "student_logits") and hasattr(model, "teacher_logits")


def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    *,
    device: str | torch.device | None = None,
    amp: str = "none",
    with_terms: bool = False,
    num_bins: int = NUM_CALIBRATION_BINS,
    processes: Processes | None = None,
) -> dict[str, float]:
    """Metrics of a model or Distiller on dict batches.

    Classifier logits are ``[B, C]``; token logits ``[B, L, V]`` with ``[B, L]`` labels count
    every position whose label is not ``-100``.

    Returns ``top1`` (percent, like every accuracy torchkd reports), ``nll`` (mean negative
    log-likelihood) and ``ece`` (15 bins) when batches carry labels, and ``perplexity``
    (``exp(nll)``, the mean over valid tokens) for token labels; ``agreement`` (percent of
    rows with the same argmax as the teacher, or as the mean of the teachers' probabilities)
    and ``teacher_top1`` (``teacher{i}_top1`` each, with several teachers), ``teacher_nll`` (of
    the teacher, or of the mean of the teachers' probabilities) and, for token labels,
    ``teacher_perplexity`` (``exp(teacher_nll)``) for a Distiller with teachers (none when a
    teacher's logits have another number of classes than the student's, as for ULD across
    vocabularies: its ids are not the labels' nor the student's, nor for a teacher with its
    own tokenizer, whose positions are not the student's: batches with
    ``teacher_positions``); ``samples``.
    With ``with_terms`` the Distiller's full forward is run and each loss term's batch-weighted
    mean is returned as ``terms/<name>`` (and the weighted total as ``loss``); state that
    evaluation must not change (stateful loss buffers such as CRD memory banks, every random
    generator) is restored afterwards.

    The model is put in eval mode and restored to its previous mode afterwards.

    With ``processes`` (a run's :class:`~torchkd.train.distributed.Parallel`, a collective:
    every process calls it with the same ``loader``), each process evaluates batch ``i`` when
    ``i mod N`` is its rank, and the metrics are computed from the sums and counts of all the
    processes (added in rank order: the one-process metrics up to the rounding of the order of
    the sums); every process returns the same metrics.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> batches = [{"inputs": torch.randn(4, 3), "labels": torch.tensor([0, 1, 1, 0])}]
        >>> sorted(evaluate(model, batches))
        ['ece', 'nll', 'samples', 'top1']
    """
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    distiller = _is_distiller(model)
    inputs_key = getattr(model, "inputs_key", "inputs")
    labels_key = getattr(model, "labels_key", "labels")
    num_teachers = len(getattr(model, "teachers", ())) if distiller else 0
    saved_buffers = _snapshot_extras(model) if with_terms else {}
    rng_state = capture_rng_state()
    was_training = model.training
    model.eval()
    totals = _Totals(num_bins)
    try:
        with torch.no_grad():
            for raw_batch, counted in _shares(loader, processes):
                batch = to_device(raw_batch, device)
                labels = batch.get(labels_key)
                # a teacher with its own tokenizer: its positions are not the student's
                own_tokens = batch.get(TEACHER_POSITIONS) is not None
                with autocast_context(device, amp):
                    if with_terms:
                        output = model(batch)
                        student_logits, teacher_logits = (
                            output.student_logits,
                            [] if own_tokens else output.teacher_logits,
                        )
                        if student_logits is None or None in teacher_logits:  # body-only LMs
                            student_logits = model.student_logits(batch[inputs_key])
                        if None in teacher_logits:
                            teacher_logits = model.teacher_logits(model.teacher_inputs(batch))
                        terms = {f"terms/{name}": value for name, value in output.terms.items()}
                        terms["loss"] = output.loss
                    elif distiller:
                        student_logits = model.student_logits(batch[inputs_key])
                        teacher_logits = (
                            [] if own_tokens else model.teacher_logits(model.teacher_inputs(batch))
                        )
                        terms = {}
                    else:
                        student_logits = select_logits(call_model(model, batch[inputs_key]))
                        teacher_logits, terms = [], {}
                if own_tokens or any(
                    t.shape[-1] != student_logits.shape[-1] for t in teacher_logits
                ):
                    teacher_logits, num_teachers = [], 0  # another vocabulary: not comparable
                if counted:
                    totals.add(student_logits, list(teacher_logits), labels, terms)
    finally:
        model.train(was_training)
        restore_rng_state(rng_state)
        _restore_extras(model, saved_buffers)
    if processes is not None and processes.world_size > 1:
        totals, num_teachers = _merged(totals, num_teachers, processes)
    return totals.result(num_teachers)


def _merged(totals: _Totals, num_teachers: int, processes: Processes) -> tuple[_Totals, int]:
    """The sums of every process's ``totals`` (moved to the CPU to be gathered), and the
    teachers compared everywhere (0 where any process found another vocabulary)."""
    if totals.bins is not None:
        totals.bins = totals.bins.cpu()
    merged = _Totals(totals.num_bins)
    shares = processes.gather_objects((totals, num_teachers))
    for share, _ in shares:
        merged.merge(share)
    return merged, min(teachers for _, teachers in shares)


def _snapshot_extras(model: nn.Module) -> dict[str, Tensor]:
    extras = getattr(model, "extras", None)
    if extras is None:
        return {}
    return {name: buffer.clone() for name, buffer in extras.named_buffers()}


def _restore_extras(model: nn.Module, saved: dict[str, Tensor]) -> None:
    if not saved:
        return
    buffers = dict(model.extras.named_buffers())
    with torch.no_grad():
        for name, value in saved.items():
            buffers[name].copy_(value)
