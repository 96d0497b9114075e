"""Without the ``tune`` extra, importing :mod:`torchkd.tune` names it (and the package that is
missing) before any of its modules fails on an import of its own."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(("module", "package"), [("optuna", "optuna"), ("sklearn", "scikit-learn")])
def test_importing_tune_without_the_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    for name in [name for name in sys.modules if name.split(".")[:2] == ["torchkd", "tune"]]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if absent
    expected = (
        rf"torchkd.tune \(hyperparameter search\) needs {package}: pip install 'torchkd\[tune\]'"
    )
    with pytest.raises(ImportError, match=expected):
        importlib.import_module("torchkd.tune")
