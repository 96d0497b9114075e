"""The MNIST-1D CNN with early exits, for in-network self-distillation ("Be Your Own Teacher",
Zhang et al., ICCV 2019; the ``byot`` loss)."""

from __future__ import annotations

from torch import Tensor, nn

from torchkd.models.registry import MODELS
from torchkd.models.simple import CNN1D

__all__ = ["CNN1DExits", "ExitHead"]


class ExitHead(nn.Module):
    """A shallow classifier on an intermediate block: ``bottleneck`` (a 3-wide convolution,
    ReLU, average pooling to the deepest block's length, flatten) gives features of the deepest
    features' size, ``classifier`` (linear) the exit's logits, the head's output."""

    def __init__(self, width: int, length: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(length),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(width * length, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(features))


@MODELS.register("cnn1d_exits")
class CNN1DExits(CNN1D):
    """:class:`~torchkd.models.CNN1D` with an early exit (:class:`ExitHead`) after ``conv1``
    and ``conv2``: ``exit1`` and ``exit2``, whose outputs are their logits and whose
    ``bottleneck`` outputs are their features, ``[B, width * 5]`` like the deepest features
    (``flatten``). The model returns the deepest exit's logits (``head``); the exits run in
    every forward pass, so taps read them, and are discarded at inference.

    Args: those of :class:`~torchkd.models.CNN1D`.

    Example:
        >>> import torch
        >>> model = CNN1DExits(width=8)
        >>> tuple(model(torch.zeros(2, 1, 40)).shape), model.exit_layers
        ((2, 10), ('exit1', 'exit2'))
    """

    exit_layers: tuple[str, ...] = ("exit1", "exit2")

    def __init__(
        self, width: int = 25, num_classes: int = 10, in_channels: int = 1, input_length: int = 40
    ) -> None:
        super().__init__(width, num_classes, in_channels, input_length)
        length = self.head.in_features // width  # the deepest block's length
        self.exit1 = ExitHead(width, length, num_classes)
        self.exit2 = ExitHead(width, length, num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        first = self.conv1(self.checked_inputs(inputs))
        second = self.conv2(first)
        self.exit1(first)
        self.exit2(second)
        return self.head(self.flatten(self.conv3(second)))
