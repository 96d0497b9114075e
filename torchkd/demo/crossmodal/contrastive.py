"""The contrastive arm: the same code student trained on the same pairs without the teacher.

A second :class:`~torchkd.demo.crossmodal.models.TokenEncoder` of the student's size reads the
docstring summary in the code BPE's tokens (``doc_inputs``); both are trained together with the
symmetric InfoNCE loss over the batch (CLIP's, Radford et al., ICML 2021), at a fixed
temperature :math:`\\tau`:

.. math::
    \\mathcal{L} = \\frac{1}{2B} \\sum_i \\Big(
        -\\log \\frac{e^{s_{ii}/\\tau}}{\\sum_j e^{s_{ij}/\\tau}}
        -\\log \\frac{e^{s_{ii}/\\tau}}{\\sum_j e^{s_{ji}/\\tau}} \\Big),
    \\qquad s_{ij} = \\cos(c_i, d_j)

with the recipe's loader, optimizer, learning-rate schedule, epochs and seed, so only the
target differs from the ``kd`` arm: a docstring encoder learned from these pairs alone
instead of the pretrained teacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from torchkd.config import Recipe

__all__ = ["TEMPERATURE", "info_nce", "train_contrastive"]

TEMPERATURE = 0.05


def info_nce(code: Tensor, docs: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """The symmetric InfoNCE loss of the module docstring (rows ``i`` are the positives).

    Example:
        >>> code = torch.eye(3)
        >>> round(float(info_nce(code, code, 1.0)), 4)  # log(e + 2) - 1
        0.5514
    """
    logits = F.normalize(code, dim=1) @ F.normalize(docs, dim=1).T / temperature
    targets = torch.arange(len(code), device=code.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def train_contrastive(recipe: Recipe) -> tuple[nn.Module, nn.Module, list[dict[str, float]]]:
    """Train the recipe's student and a docstring encoder of its size as the module docstring
    says; returns both and the per-epoch mean training loss."""
    from torchkd.config import build_loaders, build_model
    from torchkd.demo.crossmodal.models import TokenEncoder
    from torchkd.train.optim import LRSchedule, build_optimizer
    from torchkd.train.rng import seed_epoch_order, seed_everything

    train = recipe.train
    seed_everything(train.seed)  # the student starts where the kd arm's starts
    student = build_model(recipe.student)
    docs = TokenEncoder(**recipe.student.kwargs)
    loader = build_loaders(recipe.data, train.seed, splits=["train"]).train
    assert loader is not None
    parameters = [*student.parameters(), *docs.parameters()]
    optimizer = build_optimizer(parameters, train.optimizer)
    schedule = LRSchedule(optimizer, train.lr_schedule, len(loader), train.epochs * len(loader))
    history, step = [], 0
    student.train()
    docs.train()
    for epoch in range(train.epochs):
        seed_epoch_order(loader, train.seed, epoch)  # the trainer's batch order
        total = 0.0
        for batch in loader:
            schedule.apply(step)
            loss = info_nce(student(**batch["inputs"]), docs(**batch["doc_inputs"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, train.grad_clip_norm)
            optimizer.step()
            total += float(loss.detach())
            step += 1
        history.append({"epoch": epoch + 1, "train/loss": total / len(loader)})
    return student.eval(), docs.eval(), history
