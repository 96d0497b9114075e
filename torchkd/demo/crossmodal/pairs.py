"""(docstring, code) pairs of the standard library's functions, read offline with :mod:`ast`.

Every function and method of the running interpreter's standard library
(:func:`torchkd.data.corpora.python_stdlib_files`: its own test suites and third-party
packages left out) that has a docstring gives one pair: the docstring's first paragraph,
whitespace collapsed, and the function's code without its docstring
(``ast.unparse`` of the definition with the docstring statement removed: comments and the
original formatting are gone too). Pairs whose summary has fewer than ``min_words`` words,
whose function has nothing but the docstring, or whose summary repeats an earlier one are
dropped. The split is by *module* (a seeded permutation of the module names), so no held-out
function shares a file with a training one.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pair", "function_pairs", "split_pairs", "strip_docstring"]

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Pair:
    """One function: its module (``json.decoder``), qualified name, summary and code."""

    module: str
    name: str
    docstring: str
    code: str


def strip_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The function's source (``ast.unparse``) without its docstring, or ``""`` when the
    docstring is all its body.

    Example:
        >>> tree = ast.parse('def f(x):\\n    "Double x."\\n    return 2 * x')
        >>> strip_docstring(tree.body[0])
        'def f(x):\\n    return 2 * x'
    """
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    if not body:
        return ""
    stripped = copy.copy(node)
    stripped.body = body
    return ast.unparse(stripped)


def _summary(docstring: str) -> str:
    return _SPACE.sub(" ", docstring.strip().split("\n\n")[0]).strip()


def _functions(tree: ast.AST, prefix: str) -> Iterator[tuple[str, ast.AST]]:
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}.{node.name}" if prefix else node.name
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, name)


def function_pairs(files: Sequence[Path] | None = None, min_words: int = 4) -> list[Pair]:
    """The pairs of ``files`` (default: the standard library's), in file and source order.

    Args:
        files: ``.py`` files under the standard library directory (their module names come
            from their paths relative to it).
        min_words: the shortest summary kept, in words.
    """
    import sysconfig

    from torchkd.data.corpora import python_stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    pairs, seen = [], set()
    for path in python_stdlib_files() if files is None else files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are templates or in another encoding
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for name, node in _functions(tree, ""):
            docstring = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
            if not docstring:
                continue
            summary = _summary(docstring)
            code = strip_docstring(node)  # type: ignore[arg-type]
            if len(summary.split()) < min_words or not code or summary in seen:
                continue
            seen.add(summary)
            pairs.append(Pair(module, name, summary, code))
    return pairs


def split_pairs(
    pairs: Sequence[Pair], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[Pair]]:
    """``train`` / ``val`` / ``test`` pairs, split by module: the first ``test_fraction`` of a
    permutation of the module names (seeded by ``seed``) are held out (``test``), the next
    ``val_fraction`` validate, the rest train (at least one module each)."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    modules = sorted({pair.module for pair in pairs})
    if len(modules) < 3:
        raise ValueError(f"splitting by module needs at least 3 modules, got {len(modules)}")
    random.Random(seed).shuffle(modules)
    test = max(1, round(test_fraction * len(modules)))
    val = max(1, round(val_fraction * len(modules)))
    if test + val >= len(modules):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} leave no training "
            f"module of {len(modules)}"
        )
    split_of = {module: "test" for module in modules[:test]}
    split_of.update({module: "val" for module in modules[test : test + val]})
    splits: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    for pair in pairs:
        splits[split_of.get(pair.module, "train")].append(pair)
    return splits
