"""Inputs synthesized from a teacher, for data-free distillation: DeepInversion.

DeepInversion (Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020) optimizes a batch of inputs ``x`` (Adam, from Gaussian noise) so that
the teacher classifies them as chosen targets ``y`` while the statistics of the features
entering each of its BatchNorm layers match that layer's running statistics, the statistics of
the training data it stored:

.. math::
    \\mathcal{L}(x) = \\mathrm{CE}(f_T(x), y)
    + \\alpha_{bn} \\sum_l \\left(\\lVert \\mu_l(x) - \\mu_l^{BN} \\rVert_2
    + \\lVert \\sigma_l^2(x) - \\sigma_l^{2,BN} \\rVert_2\\right)
    + \\alpha_{tv} \\mathrm{TV}(x) + \\alpha_{l2} \\lVert x \\rVert^2
    + \\alpha_c \\left(1 - \\mathrm{JS}(p_T(x), p_S(x))\\right)

``μ_l(x)`` and ``σ²_l(x)`` are the per-channel mean and (biased) variance of the layer's input
over the batch and every position (:func:`bn_statistics_loss`); ``TV`` the total variation
(:func:`total_variation`); ``‖x‖²`` the mean squared input (``mean(x²)``, so its weight does not
depend on the input size). The last term is Adaptive DeepInversion's competition: with a
student, it rewards inputs on which student and teacher disagree (``JS`` the Jensen-Shannon
divergence of their softmax outputs, in nats, batch mean), so the synthesized set covers what
the student has not learned yet.

The teacher (and student) run in eval mode, so their BatchNorm layers normalize with their
running statistics and keep them; only ``x`` is optimized. Synthesis is a function of its
arguments and ``seed`` (the initial noise; targets cycle through the classes), not of the
global random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchkd.losses import jsd_loss

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "batchnorm_layers",
    "bn_statistics_loss",
    "deep_inversion",
    "total_variation",
]


def bn_statistics_loss(inputs: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """DeepInversion's feature-statistics term for one BatchNorm layer.

    .. math::
        \\lVert \\mu(x) - \\mu^{BN} \\rVert_2 + \\lVert \\sigma^2(x) - \\sigma^{2,BN} \\rVert_2,
        \\quad \\mu_c(x) = \\frac{1}{N} \\sum_{b, i} x_{b,c,i},
        \\quad \\sigma^2_c(x) = \\frac{1}{N} \\sum_{b, i} (x_{b,c,i} - \\mu_c(x))^2

    over the ``N`` values of channel ``c`` (every sample ``b`` and position ``i``): the biased
    variance, the one BatchNorm normalizes training batches by.

    Args:
        inputs: ``[B, C, *]`` features entering the BatchNorm layer.
        running_mean: ``[C]`` the layer's running mean.
        running_var: ``[C]`` the layer's running variance.

    Example:
        >>> x = torch.tensor([[[1.0, 3.0]], [[1.0, 3.0]]])  # one channel: mean 2, variance 1
        >>> bn_statistics_loss(x, torch.tensor([2.0]), torch.tensor([1.0])).item()
        0.0
    """
    if inputs.dim() < 2 or inputs.shape[1] != running_mean.shape[0]:
        raise ValueError(
            f"inputs must be [B, C, *] with C = {running_mean.shape[0]} channels (the "
            f"BatchNorm layer's), got {tuple(inputs.shape)}"
        )
    dims = [0, *range(2, inputs.dim())]
    mean = inputs.mean(dims)
    variance = inputs.var(dims, correction=0)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(
        variance - running_var
    )


def total_variation(inputs: Tensor) -> Tensor:
    """The smoothness prior: mean squared difference of neighbours along every spatial axis.

    .. math::
        \\mathrm{TV}(x) = \\sum_{d} \\operatorname{mean}\\left((x_{\\dots, i+1, \\dots}
        - x_{\\dots, i, \\dots})^2\\right)

    over the axes after ``[B, C]`` (one for sequences, two for images).

    Example:
        >>> total_variation(torch.tensor([[[0.0, 1.0, 3.0]]])).item()
        2.5
    """
    if inputs.dim() < 3:
        raise ValueError(f"inputs must be [B, C, *spatial], got {tuple(inputs.shape)}")
    return sum(inputs.diff(dim=axis).square().mean() for axis in range(2, inputs.dim()))


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics, in module order; a
    ValueError when there is none (DeepInversion has nothing to invert)."""
    layers = [
        module
        for module in model.modules()
        if isinstance(module, _BatchNorm) and module.running_mean is not None
    ]
    if not layers:
        raise ValueError(
            f"teacher: {type(model).__name__} has no BatchNorm layer with running statistics "
            "(nn.BatchNorm1d/2d/3d, track_running_stats=True); DeepInversion matches the "
            "statistics those layers stored, so give a teacher with BatchNorm (e.g. cnn1d_bn)"
        )
    return layers


@contextmanager
def _captured_inputs(layers: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """The inputs of ``layers`` in every forward pass inside the block (forward hooks)."""
    captured: list[Tensor] = []
    handles = [
        layer.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        for layer in layers
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _in_eval_mode(*models: nn.Module | None) -> Iterator[None]:
    modes = [(model, model.training) for model in models if model is not None]
    try:
        for model, _ in modes:
            model.eval()
        yield
    finally:
        for model, training in modes:
            model.train(training)


def deep_inversion(
    teacher: nn.Module,
    num_samples: int,
    input_shape: Sequence[int],
    *,
    steps: int = 200,
    batch_size: int = 256,
    lr: float = 0.05,
    bn_weight: float = 1.0,
    tv_weight: float = 0.0,
    l2_weight: float = 0.0,
    competition_weight: float = 0.0,
    student: nn.Module | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Synthesize ``num_samples`` inputs from ``teacher`` by DeepInversion (module docstring).

    Each batch of ``batch_size`` inputs starts from standard Gaussian noise and takes ``steps``
    Adam steps (learning rate ``lr``) on the loss of the module docstring, for the targets
    ``y_i = i mod C`` (``C`` the teacher's number of logits: balanced classes).

    Args:
        teacher: a classifier with at least one BatchNorm layer (running statistics).
        num_samples: inputs to synthesize.
        input_shape: one input's shape, e.g. ``(1, 40)`` for MNIST-1D.
        steps: optimizer steps per batch.
        batch_size: inputs optimized together (their BatchNorm statistics are a batch's).
        lr: Adam's learning rate.
        bn_weight: ``α_bn``.
        tv_weight: ``α_tv``.
        l2_weight: ``α_l2``.
        competition_weight: ``α_c`` (Adaptive DeepInversion); needs ``student``.
        student: the student the competition term disagrees with.
        seed: seeds the initial noise.

    Returns:
        ``(inputs [num_samples, *input_shape], targets [num_samples])`` on the teacher's
        device, detached.

    Example:
        >>> from torchkd.models import CNN1DBN
        >>> inputs, targets = deep_inversion(CNN1DBN(width=4), 6, (1, 40), steps=2)
        >>> tuple(inputs.shape), targets.tolist()
        ((6, 1, 40), [0, 1, 2, 3, 4, 5])
    """
    for name, value in [("num_samples", num_samples), ("steps", steps), ("batch_size", batch_size)]:
        if value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    for name, value in [
        ("lr", lr),
        ("bn_weight", bn_weight),
        ("tv_weight", tv_weight),
        ("l2_weight", l2_weight),
        ("competition_weight", competition_weight),
    ]:
        if value < 0 or (name == "lr" and value == 0):
            raise ValueError(f"{name} must be {'> 0' if name == 'lr' else '>= 0'}, got {value}")
    if competition_weight > 0 and student is None:
        raise ValueError(
            "competition_weight > 0 needs a student: the competition term rewards inputs on "
            "which student and teacher disagree"
        )
    layers = batchnorm_layers(teacher)
    device = next(teacher.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((num_samples, *input_shape), generator=generator)
    batches = []
    with _in_eval_mode(teacher, student), _captured_inputs(layers) as captured:
        num_classes = None
        for start in range(0, num_samples, batch_size):
            inputs = noise[start : start + batch_size].to(device).requires_grad_(True)
            positions = torch.arange(start, start + inputs.shape[0], device=device)
            optimizer = torch.optim.Adam([inputs], lr=lr)
            for _ in range(steps):
                captured.clear()
                logits = teacher(inputs)
                num_classes = num_classes or logits.shape[-1]
                loss = F.cross_entropy(logits, positions % num_classes)
                if len(captured) != len(layers):
                    raise ValueError(
                        f"teacher: its {len(layers)} BatchNorm layers ran {len(captured)} times "
                        "in one forward pass; DeepInversion needs each to run once"
                    )
                statistics = [
                    bn_statistics_loss(features, layer.running_mean, layer.running_var)
                    for features, layer in zip(captured, layers, strict=True)
                ]
                loss = loss + bn_weight * torch.stack(statistics).sum()
                if tv_weight:
                    loss = loss + tv_weight * total_variation(inputs)
                if l2_weight:
                    loss = loss + l2_weight * inputs.square().mean()
                if competition_weight:
                    assert student is not None
                    agreement = 1.0 - jsd_loss(student(inputs), logits, beta=0.5)
                    loss = loss + competition_weight * agreement
                (gradient,) = torch.autograd.grad(loss, [inputs])
                inputs.grad = gradient
                optimizer.step()
            batches.append(inputs.detach())
    assert num_classes is not None
    return torch.cat(batches), torch.arange(num_samples, device=device) % num_classes
