"""One way for a loss module to hold its hyperparameters and pass per-call overrides, and one
way for a module to take its options from its functional's signature."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from torch import nn

__all__ = ["FunctionalOptionsModule", "HyperparameterModule", "keyword_options"]


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


def keyword_options(functional: Callable[..., Any], per_call: Sequence[str]) -> inspect.Signature:
    """The keyword-only options of ``functional`` but those given per call (``per_call``), as
    a signature of positional-or-keyword parameters: the options a module stores, with the
    functional's names, defaults and order."""
    parameters = inspect.signature(functional).parameters.values()
    return inspect.Signature(
        [
            parameter.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for parameter in parameters
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in per_call
        ]
    )


class FunctionalOptionsModule(HyperparameterModule):
    """A loss module whose stored hyperparameters are its functional's options: a subclass sets
    ``options`` (:func:`keyword_options`) and ``check_options`` (the functional's own check of
    them, by name); the constructor binds, defaults, checks and stores them, and shows them in
    its signature (``help``, ``inspect``) and ``repr``.

    Example:
        >>> def scaled_loss(x, *, scale=1.0, mask=None):
        ...     return x * scale
        >>> class ScaledLoss(FunctionalOptionsModule):
        ...     options = keyword_options(scaled_loss, per_call=("mask",))
        ...     check_options = staticmethod(lambda options: None)
        >>> ScaledLoss(2.0), inspect.signature(ScaledLoss)
        (ScaledLoss(scale=2.0), <Signature (scale=1.0) -> None>)
    """

    options: ClassVar[inspect.Signature]
    check_options: ClassVar[Callable[[Mapping[str, Any]], None]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "options" not in cls.__dict__:
            return

        def __init__(self: FunctionalOptionsModule, *args: Any, **options: Any) -> None:
            FunctionalOptionsModule.__init__(self, *args, **options)

        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        __init__.__signature__ = cls.options.replace(  # type: ignore[attr-defined]
            parameters=[self_parameter, *cls.options.parameters.values()],
            return_annotation=None,
        )
        __init__.__doc__ = f"Store the options of {cls.__name__} (see the class docstring)."
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__()
        try:
            bound = self.options.bind(*args, **options)
        except TypeError as error:
            raise TypeError(f"{type(self).__name__}: {error}") from None
        bound.apply_defaults()
        self.check_options(bound.arguments)
        self.store(**bound.arguments)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())
