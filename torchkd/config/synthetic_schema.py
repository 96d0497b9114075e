"""The ``data.synthetic:`` section of a recipe: a training set synthesized from the teacher
(data-free distillation, :mod:`torchkd.data.synthetic`; built by
:mod:`torchkd.config.build_synthetic`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from torchkd.train.config import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)

__all__ = ["SyntheticConfig"]


class SyntheticConfig(Section):
    """``data.synthetic:``: inputs synthesized from the teacher replace the training split.

    The set is unlabeled (the synthesis targets are not ground truth), so a recipe with it
    takes label-free terms only (``kd``, feature and relation terms; no ``ce``); validation and
    test still use ``data.dataset``'s real splits.

    Attributes:
        method: ``deepinversion`` (Yin et al., CVPR 2020; :func:`torchkd.data.deep_inversion`).
        samples: inputs to synthesize.
        steps: Adam steps per synthesis batch.
        batch_size: inputs optimized together (their BatchNorm statistics are one batch's).
        lr: Adam's learning rate.
        bn_weight: ``α_bn``, the BatchNorm-statistics term's weight.
        tv_weight: ``α_tv``, the total-variation prior's weight.
        l2_weight: ``α_l2``, the weight of the inputs' mean square.
        competition_weight: ``α_c``, Adaptive DeepInversion's teacher-student disagreement term,
            against the run's student as built (its initial weights, or ``student.checkpoint``:
            e.g. a student distilled on a first synthetic set); 0: plain DeepInversion.
        input_shape: one input's shape; default: that of ``data.dataset``'s validation samples
            (only their shape is read).
        seed: seeds the initial noise (drawn on the CPU, so it is the same on every device).
        device: where to synthesize: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or
            ``cuda:N``; the teacher (and student) go back where they were afterwards.
        cache: keep the set in the cache directory (safetensors), keyed by the teacher's
            weights, these settings and the synthesis code, and reuse it; ``false``: synthesize
            it every run.
    """

    method: Literal["deepinversion"]
    samples: PositiveInt
    steps: PositiveInt = 200
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 0.05
    bn_weight: NonNegativeFloat = 1.0
    tv_weight: NonNegativeFloat = 0.0
    l2_weight: NonNegativeFloat = 0.0
    competition_weight: NonNegativeFloat = 0.0
    input_shape: list[PositiveInt] | None = None
    seed: NonNegativeInt = 0
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    cache: bool = True
