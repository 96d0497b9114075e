"""Model registry: ``create_model(name, **kw)`` and ``available_models()``.

Models register at their definition (``@MODELS.register("cnn1d")``); importing
:mod:`torchkd.models` registers them all.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from torchkd._registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def available_models() -> list[str]:
    """Sorted names accepted by :func:`create_model`.

    Example:
        >>> "resnet8x4" in available_models(), "cnn1d" in available_models()
        (True, True)
    """
    return MODELS.available()


def create_model(name: str | nn.Module, **kwargs: object) -> nn.Module:
    """Build the model registered under ``name``, or your own ``"package.module:Class"``
    (imported, see :func:`torchkd._registry.import_reference`); an ``nn.Module`` passes through
    unchanged.

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
    return MODELS.resolve(name)(**kwargs)
