"""The MNIST-1D CNN with BatchNorm: a teacher whose normalization statistics describe its
training data, which data-free distillation by DeepInversion inverts
(:mod:`torchkd.data.synthetic`)."""

from __future__ import annotations

from torch import nn

from torchkd.models.registry import MODELS
from torchkd.models.simple import CNN1D

__all__ = ["CNN1DBN"]


@MODELS.register("cnn1d_bn")
class CNN1DBN(CNN1D):
    """:class:`~torchkd.models.CNN1D` with a ``BatchNorm1d`` between each convolution and its
    ReLU: stage ``convK`` is ``Sequential(Conv1d, BatchNorm1d, ReLU)``, so tap paths, lengths
    and the classifier are those of ``cnn1d``.

    Args: those of :class:`~torchkd.models.CNN1D`.

    Example:
        >>> import torch
        >>> model = CNN1DBN(width=8)
        >>> tuple(model(torch.zeros(2, 1, 40)).shape), type(model.conv2[1]).__name__
        ((2, 10), 'BatchNorm1d')
    """

    def __init__(
        self, width: int = 25, num_classes: int = 10, in_channels: int = 1, input_length: int = 40
    ) -> None:
        super().__init__(width, num_classes, in_channels, input_length)
        for name in self.feature_layers:
            conv = getattr(self, name)[0]
            setattr(self, name, nn.Sequential(conv, nn.BatchNorm1d(width), nn.ReLU()))
