"""Optional dependencies: each is imported where a feature needs it, through :func:`require`.

``pip install torchkd`` pulls the core only (torch, numpy, pyyaml, pydantic, tqdm, safetensors):
the losses, the :class:`~torchkd.Distiller`, the trainer and the recipes. The rest are extras:

- ``tune``: optuna (the search), scikit-learn (its fANOVA importances), matplotlib (its plots);
- ``demo``: scikit-learn and mnist1d (the digits and MNIST-1D datasets), matplotlib (the demo
  reports' figures) and the ``hf`` packages (the language-model and embeddings demos);
- ``log``: tensorboard (a run's TensorBoard event files) and matplotlib (the run report's plots);
- ``hf``: transformers, tokenizers and accelerate (Hugging Face models, tokenizers, Trainer);
- ``all``: every extra above.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["available", "require"]

# import name -> the name pip installs it under, where the two differ
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` and return it, or raise ``ImportError`` saying which extra installs it.

    Args:
        module: the import name, e.g. ``"optuna"`` or ``"sklearn.datasets"`` (the message
            names its package, ``scikit-learn``).
        extra: the torchkd extra that installs it, e.g. ``"tune"``.
        what: the feature that needs it, first in the message.

    Example:
        >>> require("math", "tune", "a search").sqrt(4.0)
        2.0
        >>> require("no_such_module", "tune", "a search")
        Traceback (most recent call last):
        ...
        ImportError: a search needs no_such_module: pip install 'torchkd[tune]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.partition(".")[0]
        name = _DISTRIBUTIONS.get(package, package)
        raise ImportError(f"{what} needs {name}: pip install 'torchkd[{extra}]'") from error


def available(module: str) -> bool:
    """Whether ``module`` imports (it is imported, so a broken installation counts as absent)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
