"""Model registry: ``create_model(name, **kw)`` and ``available_models()``."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from torch import nn

from torchkd.models.cifar import ResNet, WideResNet
from torchkd.models.simple import CNN1D, MLP, DigitsCNN

_BASE_CHANNELS = (16, 16, 32, 64)
_X4_CHANNELS = (32, 64, 128, 256)

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn1d": CNN1D,
    "mlp": MLP,
    "digits_cnn": DigitsCNN,
    **{
        f"resnet{depth}": partial(ResNet, depth, _BASE_CHANNELS)
        for depth in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": partial(ResNet, 8, _X4_CHANNELS),
    "resnet32x4": partial(ResNet, 32, _X4_CHANNELS),
    **{
        f"wrn_{depth}_{widen}": partial(WideResNet, depth, widen)
        for depth in (16, 40)
        for widen in (1, 2)
    },
}


def available_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`.

    Example:
        >>> "resnet8x4" in available_models(), "cnn1d" in available_models()
        (True, True)
    """
    return sorted(_MODELS)


def create_model(name: str | nn.Module, **kwargs: object) -> nn.Module:
    """Build the model registered under ``name`` (an ``nn.Module`` passes through unchanged).

    Keyword arguments go to the constructor (e.g. ``width`` for ``"cnn1d"``, ``num_classes``
    for every model; CIFAR models default to 100 classes).

    Example:
        >>> create_model("cnn1d", width=6).head
        Linear(in_features=30, out_features=10, bias=True)
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise TypeError(f"create_model got a module and keyword arguments {sorted(kwargs)}")
        return name
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (available: {', '.join(available_models())})")
    return _MODELS[name](**kwargs)
