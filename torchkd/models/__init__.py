"""Reference models: MNIST-1D CNN and MLP, a digits CNN, CIFAR ResNets and Wide ResNets, and
Hugging Face causal LMs and encoders (``hf_causal_lm``, ``hf_encoder``)."""

from __future__ import annotations

from torchkd.models.cifar import ResNet, WideResNet
from torchkd.models.hf import hf_causal_lm, hf_encoder
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
    "hf_causal_lm",
    "hf_encoder",
]
