"""Temperatures that change during training: a learned, adversarial temperature (CTKD) and the
gradient reversal it trains through.

A term's temperature (a number, a :mod:`torchkd.schedules` schedule, ``"learned"`` or a module
like :class:`LearnableTemperature`) reaches its loss in one way only: the
:class:`~torchkd.distiller.Distiller` evaluates it each step and passes it to the loss as the
``temperature=`` keyword of the call.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from torchkd.losses import check_pair
from torchkd.schedules import Cosine, Schedule, as_schedule, check_finite, check_int

__all__ = ["LearnableTemperature", "reverse_gradient"]


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``-strength``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, tensor: Tensor, strength: float
    ) -> Tensor:
        ctx.strength = strength
        return tensor.clone()

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor, None]:
        return grad_output * -ctx.strength, None


def reverse_gradient(tensor: Tensor, strength: float) -> Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, ICML 2015).

    .. math::

        \\text{forward}(x) = x, \\qquad
        \\frac{\\partial L}{\\partial x} \\mapsto -\\lambda\\,\\frac{\\partial L}{\\partial x}

    Whatever produced ``tensor`` receives the reversed gradient, so a descent step on its
    parameters *increases* the loss.

    Example:
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> (3.0 * reverse_gradient(x, 0.5)).backward()
        >>> x.grad
        tensor(-1.5000)
    """
    check_finite("strength", strength)
    if strength < 0:
        raise ValueError(f"strength must be >= 0 (it is negated in backward), got {strength}")
    return _ReverseGradient.apply(tensor, float(strength))


# The reference ramps λ over the first 10 of its 240 epochs (decay_loops=10, epochs=240).
_REFERENCE_LAMBDA_RAMP = Cosine(start=0.0, end=1.0, duration=10 / 240)


class LearnableTemperature(nn.Module):
    """Curriculum temperature learned adversarially (CTKD; Li et al., AAAI 2023).

    .. math::

        \\tau = \\tau_{\\min} + \\tau_{\\text{range}}\\,\\sigma(\\theta), \\qquad
        \\min_{\\text{student}} \\max_{\\theta} L_{KD}(\\tau)

    In ``"global"`` mode :math:`\\theta` is one learned scalar and ``forward`` returns a scalar
    tensor. In ``"instance"`` mode :math:`\\theta` comes from a two-layer MLP per row: as in the
    reference's instance-wise variant its input is the teacher's top-``k`` probabilities
    (sorted) concatenated with the student's probabilities at the same classes, detached (the
    temperature net never trains the student); ``forward`` returns one τ per row (``[B]`` for
    ``[B, C]`` logits, ``[B, L]`` for ``[B, L, V]``). The reference puts BatchNorm after the
    first layer; it is left out here so a batch of one works and train/eval agree.

    ``forward`` passes τ through :func:`reverse_gradient` with strength λ, so the ordinary
    descent step on ``loss = kd_loss(..., temperature=tau)`` makes the student *minimize* the
    loss while θ *maximizes* it (the curriculum: harder as λ grows). λ follows
    ``lambda_schedule``; call :meth:`set_progress` each step (λ is not saved in the state
    dict). The default ramps λ from 0 to 1 with a half cosine over the first 10/240 of
    training, as the reference does (λ_min=0, λ_max=1, 10 of 240 epochs):

    .. math::

        \\lambda(t) = \\lambda_{\\min} + (\\lambda_{\\max} - \\lambda_{\\min})
        \\frac{1 - \\cos(\\pi \\min(t / t_{\\text{ramp}}, 1))}{2}

    Reference defaults: τ ∈ [1, 21] (``t_start=1``, ``t_end=20`` used as τ_min + 20·σ),
    θ initialized to 1 (τ₀ ≈ 15.6). Here the instance MLP's last layer starts at weight 0,
    bias ``initial_logit``, so both modes start from the same τ₀ (the reference's instance
    head starts at θ = 0).

    Args:
        mode: ``"global"`` (one τ) or ``"instance"`` (one τ per row).
        tau_min: smallest temperature, > 0.
        tau_range: width of the temperature interval, > 0; τ ∈ (τ_min, τ_min + tau_range).
        initial_logit: θ at initialization.
        num_classes: number of classes ``C`` (required in instance mode).
        top_k: teacher classes fed to the MLP (instance mode); ``None`` = all ``C``.
        hidden_dim: MLP hidden width (instance mode; the reference uses 256).
        lambda_schedule: λ as a schedule (or a constant), values >= 0.

    Example:
        >>> temperature = LearnableTemperature()
        >>> temperature.set_progress(step=50, total_steps=100)
        >>> temperature.reversal_strength
        1.0
        >>> round(temperature().item(), 3)
        15.621
    """

    def __init__(
        self,
        mode: Literal["global", "instance"] = "global",
        *,
        tau_min: float = 1.0,
        tau_range: float = 20.0,
        initial_logit: float = 1.0,
        num_classes: int | None = None,
        top_k: int | None = None,
        hidden_dim: int = 256,
        lambda_schedule: Schedule | float = _REFERENCE_LAMBDA_RAMP,
    ) -> None:
        super().__init__()
        if mode not in ("global", "instance"):
            raise ValueError(f"mode must be 'global' or 'instance', got {mode!r}")
        for name, value in (("tau_min", tau_min), ("tau_range", tau_range)):
            check_finite(name, value)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        check_finite("initial_logit", initial_logit)
        self.mode = mode
        self.tau_min = float(tau_min)
        self.tau_range = float(tau_range)
        self.lambda_schedule = as_schedule(lambda_schedule)
        self.reversal_strength = 0.0
        self.set_progress(0, 1)
        self.num_classes: int | None = None
        self.top_k: int | None = None
        if mode == "global":
            self.temperature_logit = nn.Parameter(torch.tensor(float(initial_logit)))
            return
        if num_classes is None:
            raise ValueError("num_classes is required in instance mode (it sizes the MLP)")
        self.num_classes = check_int("num_classes", num_classes)
        self.top_k = self.num_classes if top_k is None else check_int("top_k", top_k)
        if not 1 <= self.top_k <= self.num_classes:
            raise ValueError(f"top_k must be in [1, num_classes={num_classes}], got {top_k}")
        hidden_dim = check_int("hidden_dim", hidden_dim)
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.logit_net = nn.Sequential(
            nn.Linear(2 * self.top_k, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )
        nn.init.zeros_(self.logit_net[-1].weight)
        nn.init.constant_(self.logit_net[-1].bias, float(initial_logit))

    def set_progress(self, step: int, total_steps: int) -> None:
        """Set λ to ``lambda_schedule(step, total_steps)``; call it before each forward."""
        strength = self.lambda_schedule(step, total_steps)
        check_finite("lambda_schedule value", strength)
        if strength < 0:
            raise ValueError(f"lambda_schedule must give values >= 0, got {strength} at {step}")
        self.reversal_strength = float(strength)

    def forward(
        self, student_logits: Tensor | None = None, teacher_logits: Tensor | None = None
    ) -> Tensor:
        """τ with the gradient reversal applied: a scalar, or one value per row ``[...]``.

        Logits (``[..., C]``) are required in instance mode and ignored in global mode.
        """
        if self.mode == "global":
            logit = self.temperature_logit
        else:
            logit = self._instance_logit(student_logits, teacher_logits)
        temperature = self.tau_min + self.tau_range * torch.sigmoid(logit)
        return reverse_gradient(temperature, self.reversal_strength)

    def _instance_logit(
        self, student_logits: Tensor | None, teacher_logits: Tensor | None
    ) -> Tensor:
        if student_logits is None or teacher_logits is None:
            raise ValueError("instance mode needs student_logits and teacher_logits")
        check_pair(student_logits, teacher_logits)
        if student_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"expected logits with num_classes={self.num_classes} classes, got shape "
                f"{tuple(student_logits.shape)}"
            )
        dtype = self.logit_net[0].weight.dtype
        teacher_probs = teacher_logits.detach().to(dtype).softmax(dim=-1)
        student_probs = student_logits.detach().to(dtype).softmax(dim=-1)
        teacher_top, top_classes = teacher_probs.topk(self.top_k, dim=-1)
        student_at_top = student_probs.gather(-1, top_classes)
        features = torch.cat([teacher_top, student_at_top], dim=-1)
        return self.logit_net(features).squeeze(-1)

    def extra_repr(self) -> str:
        parts = [f"mode={self.mode!r}", f"tau_min={self.tau_min}", f"tau_range={self.tau_range}"]
        if self.mode == "instance":
            parts += [f"num_classes={self.num_classes}", f"top_k={self.top_k}"]
        parts += [f"lambda_schedule={self.lambda_schedule}"]
        return ", ".join(parts)
