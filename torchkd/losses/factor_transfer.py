"""Factor transfer (FT): a paraphraser encodes the teacher feature, a translator the student's."""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd.losses._common import check_floating, check_number, unit_vectors, upcast
from torchkd.losses._feature_common import check_feature_map, match_spatial_size
from torchkd.losses.registry import Shapes, register

__all__ = ["FactorTransferLoss", "Paraphraser", "Translator", "factor_transfer_loss"]

Stage = Literal["paraphraser", "transfer"]
_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _conv_stack(
    channels: list[int],
    spatial_dims: int,
    *,
    final_activation: bool,
) -> nn.Sequential:
    """3x3 (size-preserving) convolutions between consecutive ``channels``, LeakyReLU(0.1)."""
    if spatial_dims not in _CONVS:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    layers: list[nn.Module] = []
    for index, (in_channels, out_channels) in enumerate(itertools.pairwise(channels)):
        conv = _CONVS[spatial_dims]
        layers.append(conv(in_channels, out_channels, kernel_size=3, padding=1))
        if final_activation or index < len(channels) - 2:
            layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def factor_transfer_loss(
    student_factor: Tensor, teacher_factor: Tensor, *, p: float = 1.0
) -> Tensor:
    r"""Distance between the L2-normalized student and teacher factors.

    .. math::
        \mathcal{L} = \frac{1}{B\,N} \sum_b \Big\lVert
            \frac{\mathrm{vec}(T_b)}{\lVert \mathrm{vec}(T_b) \rVert_2}
            - \frac{\mathrm{vec}(S_b)}{\lVert \mathrm{vec}(S_b) \rVert_2} \Big\rVert_p^p

    over the :math:`N` entries of each flattened factor. From Kim et al., "Paraphrasing Complex
    Network: Network Compression via Factor Transfer", NeurIPS 2018 (:math:`p = 1` as in the
    paper and the authors' code). RepDistiller's variant first collapses the channels of each
    factor as attention transfer does; here the whole factor is compared, as in the paper.

    Example:
        >>> import torch
        >>> factor = torch.rand(2, 3, 4, 4)
        >>> factor_transfer_loss(2.0 * factor, factor).item()
        0.0
    """
    check_floating("student_factor", student_factor)
    check_floating("teacher_factor", teacher_factor)
    check_number("p", p, minimum=0.0, strict=True)
    if student_factor.dim() < 2 or student_factor.shape != teacher_factor.shape:
        raise ValueError(
            f"student_factor {tuple(student_factor.shape)} and teacher_factor "
            f"{tuple(teacher_factor.shape)} must have the same shape [B, ...]"
        )
    student = unit_vectors(upcast(student_factor, teacher_factor).flatten(1), dim=1)
    teacher = unit_vectors(upcast(teacher_factor, student_factor).flatten(1), dim=1)
    difference = (student - teacher).abs()
    nonzero = difference > 0  # |x|^p has an infinite slope at 0 for p < 1
    return torch.where(nonzero, torch.where(nonzero, difference, 1.0).pow(p), 0.0).mean()


class Paraphraser(nn.Module):
    """Convolutional autoencoder of the teacher feature; its code is the teacher's *factor*.

    Encoder: three 3x3 convolutions ``C -> C -> k -> k`` with ``k = round(rate * C)``; decoder
    mirrors it ``k -> k -> C -> C`` (LeakyReLU 0.1 between layers, none after the last so any
    real-valued feature can be reconstructed). Sizes are preserved.
    """

    def __init__(
        self,
        in_channels: int,
        rate: float = 0.5,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        check_number("in_channels", in_channels, minimum=1, integer=True)
        check_number("rate", rate, minimum=0.0, strict=True)
        self.factor_channels = max(1, round(rate * in_channels))
        factor = self.factor_channels
        self.encoder = _conv_stack(
            [in_channels, in_channels, factor, factor],
            spatial_dims,
            final_activation=True,
        )
        self.decoder = _conv_stack(
            [factor, factor, in_channels, in_channels],
            spatial_dims,
            final_activation=False,
        )

    def forward(self, teacher_feature: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(factor, reconstruction)``."""
        factor = self.encoder(teacher_feature)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder: three 3x3 convolutions ``C_s -> C_s -> k -> k`` to the factor space."""

    def __init__(
        self,
        in_channels: int,
        factor_channels: int,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.encoder = _conv_stack(
            [in_channels, in_channels, factor_channels, factor_channels],
            spatial_dims,
            final_activation=True,
        )

    def forward(self, student_feature: Tensor) -> Tensor:
        return self.encoder(student_feature)


def _factor_channels(student: Shapes, teacher: Shapes) -> dict[str, Any]:
    """The paraphraser's and translator's sizes from the probed shapes."""
    return {
        "student_channels": student[0][1],
        "teacher_channels": teacher[0][1],
        "spatial_dims": len(teacher[0]) - 2,
    }


@register(
    "factor_transfer",
    functional=None,
    signature="features",
    family="feature",
    compares_shapes=True,
    sizes=_factor_channels,
)
class FactorTransferLoss(nn.Module):
    r"""Factor transfer with its two trainable parts and its two stages.

    - ``stage="paraphraser"``: returns the reconstruction loss
      :math:`\frac{1}{N}\lVert F^t - P(F^t) \rVert_2^2` that trains the paraphraser on the
      teacher feature (the student feature is ignored and gets no gradient from this term).
    - ``stage="transfer"``: freezes the paraphraser (``requires_grad=False``, run without
      gradient) and returns :func:`factor_transfer_loss` between the translator's factor of the
      student feature and the paraphraser's factor of the teacher feature (the larger is
      average-pooled to the smaller spatial size first, as RepDistiller does). RepDistiller
      weights this term by 200.

    A recipe runs the same term twice with different ``stage``; the transfer run must start from
    the paraphraser trained in the first run (load this module's ``state_dict``, which holds
    both the paraphraser and the translator). The translator is the student-side adapter, so the
    term needs no engine adapter (``Term(adapter="none")``).

    Args:
        student_channels: channels of the student feature.
        teacher_channels: channels of the teacher feature.
        rate: paraphrase rate ``k``: factor channels = ``round(rate * teacher_channels)``.
        p: exponent of the factor distance.
        stage: ``"paraphraser"`` or ``"transfer"`` (may be reassigned later).
        spatial_dims: spatial dimensions of the feature maps (1 for ``[B, C, L]``, 2 for
            ``[B, C, H, W]``, 3).

    Example:
        >>> import torch
        >>> loss = FactorTransferLoss(student_channels=4, teacher_channels=8, stage="paraphraser")
        >>> student, teacher = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 6, 6)
        >>> loss(student, teacher).shape
        torch.Size([])
        >>> loss.stage = "transfer"
        >>> any(p.requires_grad for p in loss.paraphraser.parameters())
        False
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        rate: float = 0.5,
        p: float = 1.0,
        stage: Stage = "transfer",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        check_number("student_channels", student_channels, minimum=1, integer=True)
        check_number("teacher_channels", teacher_channels, minimum=1, integer=True)
        check_number("p", p, minimum=0.0, strict=True)
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.rate = rate
        self.p = p
        self.spatial_dims = spatial_dims
        self.paraphraser = Paraphraser(teacher_channels, rate, spatial_dims)
        self.translator = Translator(
            student_channels, self.paraphraser.factor_channels, spatial_dims
        )
        self.stage = stage

    @property
    def stage(self) -> Stage:
        """The current stage; setting it (un)freezes the paraphraser."""
        return self._stage

    @stage.setter
    def stage(self, stage: Stage) -> None:
        if stage not in ("paraphraser", "transfer"):
            raise ValueError(f"stage must be 'paraphraser' or 'transfer', got {stage!r}")
        self._stage = stage
        self.paraphraser.requires_grad_(stage == "paraphraser")

    def _check(self, name: str, feature: Tensor, channels: int) -> None:
        check_feature_map(name, feature)
        if feature.dim() != self.spatial_dims + 2 or feature.shape[1] != channels:
            raise ValueError(
                f"{name} must be [B, {channels}, ...] with {self.spatial_dims} spatial "
                f"dimension(s) (spatial_dims), got {tuple(feature.shape)}"
            )

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        self._check("student_feature", student_feature, self.student_channels)
        self._check("teacher_feature", teacher_feature, self.teacher_channels)
        if student_feature.shape[0] != teacher_feature.shape[0]:
            raise ValueError(
                f"student_feature {tuple(student_feature.shape)} and teacher_feature "
                f"{tuple(teacher_feature.shape)} must have the same batch size"
            )
        dtype = next(self.translator.parameters()).dtype
        student_feature, teacher_feature = student_feature.to(dtype), teacher_feature.to(dtype)
        if self.stage == "paraphraser":
            _, reconstruction = self.paraphraser(teacher_feature)
            return F.mse_loss(reconstruction, teacher_feature)
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher_feature)
        student_factor = self.translator(student_feature)
        student_factor, teacher_factor = match_spatial_size(
            student_factor, teacher_factor, pool=True, names=("student_factor", "teacher_factor")
        )
        return factor_transfer_loss(student_factor, teacher_factor, p=self.p)

    def extra_repr(self) -> str:
        return (
            f"student_channels={self.student_channels}, teacher_channels={self.teacher_channels}, "
            f"rate={self.rate}, p={self.p}, stage={self.stage!r}, spatial_dims={self.spatial_dims}"
        )
