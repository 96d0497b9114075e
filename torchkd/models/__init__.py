"""Reference models: MNIST-1D CNN and MLP, a digits CNN, CIFAR ResNets and Wide ResNets."""

from __future__ import annotations

from torchkd.models.cifar import ResNet, WideResNet
from torchkd.models.registry import MODELS, available_models, create_model
from torchkd.models.simple import CNN1D, MLP, DigitsCNN

__all__ = [
    "CNN1D",
    "MLP",
    "MODELS",
    "DigitsCNN",
    "ResNet",
    "WideResNet",
    "available_models",
    "create_model",
]
