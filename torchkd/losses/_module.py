"""One way for a loss module to hold its hyperparameters and pass per-call overrides."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["HyperparameterModule"]


class HyperparameterModule(nn.Module):
    """A loss module whose hyperparameters are attributes, handed to its functional by name.

    :meth:`store` sets them (as plain assignments would: a tensor stays an attribute, an
    ``nn.Parameter`` is registered, so ``repr`` and ``state_dict`` are those of the
    assignments); :meth:`hyperparameters` reads them back for a call, an override that is not
    None replacing the stored value (``temperature=None`` keeps the stored temperature).

    Example:
        >>> class Scaled(HyperparameterModule):
        ...     def __init__(self, temperature=1.0, reduction="sum"):
        ...         super().__init__()
        ...         self.store(temperature=temperature, reduction=reduction)
        >>> loss = Scaled(temperature=2.0)
        >>> loss.hyperparameters(), loss.hyperparameters(temperature=4.0)
        ({'temperature': 2.0, 'reduction': 'sum'}, {'temperature': 4.0, 'reduction': 'sum'})
        >>> loss.hyperparameters(temperature=None)["temperature"]
        2.0
    """

    _hyperparameters: tuple[str, ...] = ()

    def store(self, **values: Any) -> None:
        """Set each value as the attribute of its name, in order, and record the names."""
        for name, value in values.items():
            setattr(self, name, value)
        self._hyperparameters = tuple(dict.fromkeys((*self._hyperparameters, *values)))

    def hyperparameters(self, **overrides: Any) -> dict[str, Any]:
        """The stored hyperparameters by name, with the overrides that are not None applied."""
        unknown = [name for name in overrides if name not in self._hyperparameters]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no hyperparameter {unknown[0]!r} to override "
                f"(stored: {self._hyperparameters})"
            )
        return {
            name: getattr(self, name) if overrides.get(name) is None else overrides[name]
            for name in self._hyperparameters
        }
