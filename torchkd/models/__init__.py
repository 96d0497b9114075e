"""Reference models: MNIST-1D CNNs (plain, with BatchNorm, with early exits) and MLP, a digits
CNN, CIFAR ResNets and Wide ResNets, and Hugging Face causal LMs, encoders and sentence encoders
(``hf_causal_lm``, ``hf_encoder``, ``hf_sentence_encoder``)."""

from __future__ import annotations

from torchkd.models.batchnorm import CNN1DBN
from torchkd.models.cifar import ResNet, WideResNet
from torchkd.models.exits import CNN1DExits
from torchkd.models.hf import SentenceEncoder, hf_causal_lm, hf_encoder, hf_sentence_encoder
from torchkd.models.registry import MODELS, available_models, create_model
from torchkd.models.simple import CNN1D, MLP, DigitsCNN

__all__ = [
    "CNN1D",
    "CNN1DBN",
    "MLP",
    "MODELS",
    "CNN1DExits",
    "DigitsCNN",
    "ResNet",
    "SentenceEncoder",
    "WideResNet",
    "available_models",
    "create_model",
    "hf_causal_lm",
    "hf_encoder",
    "hf_sentence_encoder",
]
