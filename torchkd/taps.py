"""Capture intermediate outputs of a model by dotted module path, with forward hooks.

A path is a key of ``dict(model.named_modules())``: ``"layer3.1.conv2"``, or ``"0.2"`` inside
an ``nn.Sequential`` / ``nn.ModuleList`` (numeric parts are the container indices). What is
stored for a path is the module's output, except that a tuple or list output keeps only its
first element (the hidden state of ``nn.LSTM`` / ``nn.GRU`` and of most transformer layers); a
dict output is kept whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from torchkd._registry import closest

__all__ = ["Taps", "resolve_module"]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule of ``model`` at dotted ``path``.

    Raises:
        KeyError: ``path`` is not a module path of ``model``; the message lists the closest
            valid names.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU(), nn.Linear(8, 2)))
        >>> resolve_module(net, "1.1")
        Linear(in_features=8, out_features=2, bias=True)
    """
    modules = dict(model.named_modules())
    if path not in modules:
        names = [name for name in modules if name]
        close = closest(path, names, cutoff=0.5, limit=5)
        hint = f"closest: {', '.join(repr(name) for name in close)}" if close else "no close match"
        raise KeyError(
            f"no module at path {path!r} in {type(model).__name__} ({hint}; the valid paths are "
            f"the keys of dict(model.named_modules()), {len(names)} in all)"
        )
    return modules[path]


class Taps:
    """Record the outputs of the submodules at ``paths`` while hooks are attached.

    Hooks are attached on construction and removed by :meth:`remove` or on leaving the ``with``
    block (also when it raises). Each forward call of ``model`` starts a fresh record; a tapped
    module that runs twice within one forward call is an error (which output would be meant is
    ambiguous: tap a module that runs once).

    Args:
        model: the network to observe.
        paths: dotted module paths (keys of ``dict(model.named_modules())``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> with Taps(net, ["1"]) as taps:
        ...     logits = net(torch.randn(3, 4))
        >>> taps["1"].shape
        torch.Size([3, 8])
        >>> len(net[1]._forward_hooks)
        0
    """

    def __init__(self, model: nn.Module, paths: Iterable[str]) -> None:
        self.paths = tuple(dict.fromkeys(paths))
        modules = [resolve_module(model, path) for path in self.paths]
        self.outputs: dict[str, Any] = {}
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._clear)]
        self._handles += [
            module.register_forward_hook(self._recorder(path))
            for path, module in zip(self.paths, modules, strict=True)
        ]

    def _clear(self, module: nn.Module, args: object) -> None:
        self.outputs.clear()

    def _recorder(self, path: str) -> Callable[[nn.Module, object, object], None]:
        def record(module: nn.Module, args: object, output: object) -> None:
            if path in self.outputs:
                raise RuntimeError(
                    f"tapped module {path!r} ran more than once in one forward call; tap a "
                    "module that runs once per forward"
                )
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[path] = output

        return record

    def __getitem__(self, path: str) -> Any:
        if path not in self.outputs:
            if path not in self.paths:
                raise KeyError(f"{path!r} is not tapped (tapped paths: {list(self.paths)})")
            raise KeyError(f"module {path!r} did not run in the last forward call")
        return self.outputs[path]

    def remove(self) -> None:
        """Detach every hook (safe to call more than once). Recorded outputs stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> Taps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()
