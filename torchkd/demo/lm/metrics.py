"""What the language-model demo measures on its held-out files: perplexity, next-token top-1,
top-1 agreement with the teacher, and inference speed in tokens per second."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.forward import call_model, select_logits
from torchkd.lm import IGNORE_INDEX

__all__ = ["evaluate_lm", "top1_predictions"]


def _logits(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    return select_logits(call_model(model, batch["inputs"])).float()


def top1_predictions(model: nn.Module, loader: Iterable[Mapping[str, Any]]) -> Tensor:
    """``[samples, seq_len]`` argmax of ``model``'s next-token logits at every position,
    rows ordered by each sample's ``index`` (the reference for :func:`evaluate_lm`'s
    agreement)."""
    rows: dict[int, Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                predictions = _logits(model, batch).argmax(-1)
                rows.update(zip(batch["index"].tolist(), predictions, strict=True))
    finally:
        model.train(was_training)
    return torch.stack([rows[index] for index in range(len(rows))])


def evaluate_lm(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    teacher_predictions: Tensor | None = None,
) -> dict[str, float]:
    r"""Metrics of the causal LM ``model`` on text batches (shifted ``labels``, ``-100`` where
    no token is predicted), over every labeled position:

    - ``perplexity`` :math:`= \exp(\frac{1}{N}\sum_t -\log p(y_t \mid y_{<t}))` and ``nll``
      (the mean in nats);
    - ``top1``: percent of positions whose most likely token is the next token;
    - ``agreement`` (with ``teacher_predictions`` from :func:`top1_predictions`): percent of
      positions where the model's most likely token is the teacher's;
    - ``tokens_per_second``: input tokens the model reads per second of its forward passes
      (batched, no gradient; measured here, so it depends on the machine and its load);
    - ``tokens``: the number of labeled positions.

    Example:
        >>> from torchkd.demo.lm.metrics import evaluate_lm
        >>> class Uniform(nn.Module):
        ...     def forward(self, input_ids, attention_mask):
        ...         return torch.zeros(*input_ids.shape, 4)
        >>> ids = torch.tensor([[0, 1, 2]])
        >>> batch = {"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        ...          "labels": torch.tensor([[1, 2, -100]]), "index": torch.tensor([0])}
        >>> round(evaluate_lm(Uniform(), [batch])["perplexity"], 6)
        4.0
    """
    nll = correct = agree = 0.0
    tokens = processed = 0
    seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                started = time.perf_counter()
                logits = _logits(model, batch)
                seconds += time.perf_counter() - started
                labels = batch["labels"]
                valid = labels != IGNORE_INDEX
                predictions = logits.argmax(-1)
                nll += float(F.cross_entropy(logits[valid], labels[valid], reduction="sum"))
                correct += float((predictions == labels)[valid].sum())
                if teacher_predictions is not None:
                    reference = teacher_predictions[batch["index"]]
                    agree += float((predictions == reference)[valid].sum())
                tokens += int(valid.sum())
                processed += labels.numel()
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ValueError("evaluate_lm: the batches hold no labeled position (all labels -100)")
    metrics = {
        "perplexity": math.exp(nll / tokens),
        "nll": nll / tokens,
        "top1": 100.0 * correct / tokens,
        "tokens_per_second": processed / seconds if seconds > 0 else math.inf,
        "tokens": float(tokens),
    }
    if teacher_predictions is not None:
        metrics["agreement"] = 100.0 * agree / tokens
    return metrics
