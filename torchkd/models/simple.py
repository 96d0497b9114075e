"""Small reference models for the offline datasets: the MNIST-1D CNN, an MLP, a digits CNN.

Every model names its stages, so feature taps have stable dotted paths: ``feature_layers``
lists the intermediate stages (post-activation outputs) and ``embedding_layer`` the flattened
penultimate representation, e.g. ``CNN1D``: ``("conv1", "conv2", "conv3")`` and ``"flatten"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from torchkd.models.registry import MODELS


def _conv_output_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel_size) // stride + 1


@MODELS.register("cnn1d")
class CNN1D(nn.Module):
    """The MNIST-1D convolutional baseline (Greydanus, "Scaling down deep learning", 2020).

    Three 1-D convolutions with stride 2 and padding 1 (kernel sizes 5, 3, 3, as in the
    paper's ``ConvBase``), each followed by a ReLU, then a linear classifier on the flattened
    features. With ``[1, 40]`` inputs the lengths go 40 → 19 → 10 → 5.

    Args:
        width: channels of every convolution (the paper uses 25; a wide teacher 64, small
            students 6–16).
        num_classes: output logits.
        in_channels: input channels.
        input_length: input sequence length (sets the classifier's input size).

    Inputs are ``[B, in_channels, input_length]``; ``[B, input_length]`` is accepted when
    ``in_channels == 1``.

    Example:
        >>> import torch
        >>> model = CNN1D(width=8)
        >>> tuple(model(torch.zeros(2, 1, 40)).shape), model.feature_layers
        ((2, 10), ('conv1', 'conv2', 'conv3'))
    """

    feature_layers: tuple[str, ...] = ("conv1", "conv2", "conv3")
    embedding_layer = "flatten"

    def __init__(
        self, width: int = 25, num_classes: int = 10, in_channels: int = 1, input_length: int = 40
    ) -> None:
        super().__init__()
        if width <= 0 or num_classes <= 0 or in_channels <= 0:
            raise ValueError(
                f"width, num_classes and in_channels must be positive, got {width}, "
                f"{num_classes}, {in_channels}"
            )
        self.in_channels = in_channels
        self.input_length = input_length
        length = input_length
        channels = in_channels
        for stage, kernel_size in enumerate((5, 3, 3), start=1):
            conv = nn.Conv1d(channels, width, kernel_size, stride=2, padding=1)
            self.add_module(f"conv{stage}", nn.Sequential(conv, nn.ReLU()))
            length = _conv_output_length(length, kernel_size, stride=2, padding=1)
            channels = width
        if length <= 0:
            raise ValueError(f"input_length={input_length} is too short for three stride-2 convs")
        self.flatten = nn.Flatten()
        self.head = nn.Linear(width * length, num_classes)

    def checked_inputs(self, inputs: Tensor) -> Tensor:
        """``inputs`` as ``[B, in_channels, input_length]``, or a ValueError naming the shape."""
        if inputs.dim() == 2 and self.in_channels == 1:
            inputs = inputs.unsqueeze(1)
        if inputs.dim() != 3 or inputs.shape[1:] != (self.in_channels, self.input_length):
            raise ValueError(
                f"{type(self).__name__} expects inputs [B, {self.in_channels}, "
                f"{self.input_length}], got {tuple(inputs.shape)}"
            )
        return inputs

    def forward(self, inputs: Tensor) -> Tensor:
        features = self.conv3(self.conv2(self.conv1(self.checked_inputs(inputs))))
        return self.head(self.flatten(features))


@MODELS.register("mlp")
class MLP(nn.Module):
    """Multilayer perceptron on flattened inputs: ``hidden1 .. hiddenK`` (Linear + ReLU), ``head``.

    Args:
        in_features: size of a flattened input (40 for MNIST-1D ``[1, 40]`` inputs).
        hidden: widths of the hidden layers (empty: logistic regression).
        num_classes: output logits.

    Example:
        >>> import torch
        >>> model = MLP(40, hidden=(32, 16))
        >>> tuple(model(torch.zeros(2, 1, 40)).shape), model.feature_layers
        ((2, 10), ('hidden1', 'hidden2'))
    """

    embedding_layer = "flatten"

    def __init__(
        self, in_features: int = 40, hidden: Sequence[int] = (256,), num_classes: int = 10
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        if any(width <= 0 for width in widths) or num_classes <= 0:
            raise ValueError(
                f"in_features, hidden widths and num_classes must be positive, got "
                f"in_features={in_features}, hidden={tuple(hidden)}, num_classes={num_classes}"
            )
        self.in_features = in_features
        self.flatten = nn.Flatten()
        names = []
        for layer, (fan_in, fan_out) in enumerate(pairwise(widths), start=1):
            names.append(f"hidden{layer}")
            self.add_module(names[-1], nn.Sequential(nn.Linear(fan_in, fan_out), nn.ReLU()))
        self.feature_layers: tuple[str, ...] = tuple(names)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        features = self.flatten(inputs)
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"MLP expects inputs flattening to [B, {self.in_features}], "
                f"got {tuple(inputs.shape)}"
            )
        for name in self.feature_layers:
            features = getattr(self, name)(features)
        return self.head(features)


@MODELS.register("digits_cnn")
class DigitsCNN(nn.Module):
    """A small 2-D CNN for 8×8 sklearn digits: two 3×3 conv stages, flatten, linear head.

    ``conv1`` keeps 8×8 (``width`` channels); ``conv2`` halves it to 4×4 (``2 * width``).

    Args:
        width: channels of the first convolution.
        num_classes: output logits.

    Example:
        >>> import torch
        >>> tuple(DigitsCNN(width=4)(torch.zeros(2, 1, 8, 8)).shape)
        (2, 10)
    """

    feature_layers: tuple[str, ...] = ("conv1", "conv2")
    embedding_layer = "flatten"

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        if width <= 0 or num_classes <= 0:
            raise ValueError(f"width and num_classes must be positive, got {width}, {num_classes}")
        self.conv1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.flatten = nn.Flatten()
        self.head = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, inputs: Tensor) -> Tensor:
        if inputs.dim() != 4 or inputs.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitsCNN expects inputs [B, 1, 8, 8], got {tuple(inputs.shape)}")
        return self.head(self.flatten(self.conv2(self.conv1(inputs))))
