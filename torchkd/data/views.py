"""Views of a dict dataset that answer both one position and a list of positions (so
whole-batch loading through :func:`torchkd.data.batching.batch_loader` keeps working)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["RowsView", "WithoutLabels"]


class WithoutLabels:
    """A view of a dict dataset that drops ``"labels"`` (an honest label-free transfer set).

    Example:
        >>> from torchkd.data import load_digits
        >>> sorted(WithoutLabels(load_digits("val"))[0])
        ['index', 'inputs']
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """A sample, or a batch for a sequence of positions (whatever the dataset answers)."""
        return {k: v for k, v in self.dataset[position].items() if k != "labels"}


class RowsView:
    """The rows ``rows`` of a dict dataset, renumbered from 0 (samples keep their ``index``).

    Example:
        >>> from torchkd.data import load_digits
        >>> view = RowsView(load_digits("val"), [5, 2])
        >>> len(view), int(view[1]["index"]), view[[0, 1]]["index"].tolist()
        (2, 2, [5, 2])
    """

    def __init__(self, dataset: Any, rows: Sequence[int]) -> None:
        self.dataset = dataset
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: Any) -> dict[str, Any]:
        """A sample, or a batch for a sequence of positions."""
        if isinstance(position, int):
            return self.dataset[self.rows[position]]
        return self.dataset[[self.rows[p] for p in position]]
