"""Imports point one way: every import of every module under ``torchkd/`` (function-local and
``TYPE_CHECKING`` imports included) goes to a lower or equal layer, and no modules import each
other in a circle. A failure names the file, the line and the import.

The layers, bottom to top (see ``docs/architecture.md``)::

    0  _registry, _extras, environment, errors   generic helpers, no torchkd imports
       _files, batch
    1  losses                           pure math
    2  schedules, temperature, adapters, taps, forward, teachers, lm (model, tokens)
    3  distiller, terms, calls, capture, data, models, lm.cache, lm.on_policy, lm.server
       (and the package root, which exports the Distiller)
    4  train                            the engine
    5  report
    6  config                           recipes: schema, loading, building, fit_recipe
    7  tune, select_teacher, demo
    8  cli, __main__
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "torchkd"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

LAYERS: dict[str, int] = {
    "_registry": 0,
    "_files": 0,
    "_extras": 0,
    "errors": 0,
    "environment": 0,
    "batch": 0,
    "losses": 1,
    "schedules": 2,
    "temperature": 2,
    "adapters": 2,
    "taps": 2,
    "teachers": 2,
    "forward": 2,
    "lm": 2,  # a causal LM's body and projection, token labels and their normalizer
    "lm.cache": 3,  # the teacher cache: runs teachers, reads datasets' files
    "lm.on_policy": 3,
    "lm.server": 3,  # the teacher server: answers what the teacher cache stores
    "": 3,  # torchkd/__init__.py
    "distiller": 3,
    "terms": 3,
    "capture": 3,
    "calls": 3,
    "data": 3,
    "models": 3,
    "train": 4,
    "report": 5,
    "config": 6,
    "tune": 7,
    "select_teacher": 7,
    "demo": 7,
    "integrations": 7,
    "cli": 8,
    "__main__": 8,
}


@dataclass(frozen=True)
class Import:
    """One import statement: where it is and which torchkd module it reaches."""

    source: str  # dotted module of the importing file
    target: str  # dotted module imported
    path: Path
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(name: str, modules: set[str]) -> str:
    """The longest prefix of ``name`` that is a module of the tree (``a.b.func`` -> ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rpartition(".")[0]
    return name


def read_imports(root: Path) -> tuple[set[str], list[Import]]:
    """Every module under ``root`` and every import of a module of the same package."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    package = root.name
    imports: list[Import] = []
    for path in files:
        source = module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from torchkd import losses" imports the submodule torchkd.losses
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name == package or name.startswith(package + "."):
                    target = resolve(name, modules)
                    if target != source:
                        imports.append(Import(source, target, path, node.lineno))
    return modules, imports


def layer_of(module: str, package: str, layers: dict[str, int]) -> int:
    """The layer of the longest key of ``layers`` that is ``module`` or a package above it
    (``torchkd.lm.cache.read`` -> ``"lm.cache"``, else ``"lm"``)."""
    unit = module.removeprefix(package).lstrip(".")
    while unit not in layers and "." in unit:
        unit = unit.rpartition(".")[0]
    if unit not in layers:
        raise AssertionError(f"{module}: no layer assigned; add {unit!r} to LAYERS")
    return layers[unit]


def upward_imports(imports: list[Import], package: str, layers: dict[str, int]) -> list[str]:
    problems = []
    for item in imports:
        here, there = layer_of(item.source, package, layers), layer_of(item.target, package, layers)
        if there > here:
            problems.append(
                f"{item.path}:{item.line}: {item.source} (layer {here}) imports {item.target} "
                f"(layer {there}): imports must point down"
            )
    return problems


def import_cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """Every cycle of the module graph, one per strongly connected component (Tarjan)."""
    graph: dict[str, list[str]] = {module: [] for module in modules}
    for item in imports:
        graph[item.source].append(item.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_every_import_points_down_and_nothing_is_circular() -> None:
    modules, imports = read_imports(ROOT)
    assert len(modules) > 40 and len(imports) > 100  # the reader really read the package
    problems = upward_imports(imports, PACKAGE, LAYERS)
    problems += [
        f"import circle: {' <-> '.join(cycle)}" for cycle in import_cycles(modules, imports)
    ]
    assert not problems, "\n".join(problems)


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def old_layout(tmp_path: Path) -> Path:
    """A small tree with the circles the layout had before the restructuring."""
    root = tmp_path / "torchkd"
    write(root, "__init__.py", "")
    write(root, "config.py", "from torchkd.train import fit\n")
    write(root, "train/__init__.py", "from torchkd.train.loop import fit\n")
    write(root, "train/loop.py", "def fit():\n    from torchkd.config import TrainConfig\n")
    write(root, "tune.py", "from torchkd.tune_report import summarize\n")
    write(
        root,
        "tune_report.py",
        "import typing\nif typing.TYPE_CHECKING:\n    from torchkd.tune import X\n",
    )
    return root


def test_the_checker_finds_upward_imports_and_circles(old_layout: Path) -> None:
    modules, imports = read_imports(old_layout)
    layers = {"": 3, "train": 4, "config": 6, "tune": 7, "tune_report": 7}
    upward = upward_imports(imports, "torchkd", layers)
    assert len(upward) == 1 and "train/loop.py:2: torchkd.train.loop (layer 4) imports" in upward[0]
    assert "torchkd.config (layer 6)" in upward[0]
    cycles = import_cycles(modules, imports)
    assert ["torchkd.tune", "torchkd.tune_report"] in cycles
    assert ["torchkd.config", "torchkd.train", "torchkd.train.loop"] in cycles
