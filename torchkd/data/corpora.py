"""Offline corpora from the running interpreter: its standard library's source code (a
code-completion corpus) and English prose (the bundled documentation topics and docstrings).

Both come from files every Python installation has, so demos and tests need no download. The
exact text depends on the Python version: results are comparable within one version.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["EXCLUDED_DIRECTORIES", "english_documents", "python_stdlib_files"]

EXCLUDED_DIRECTORIES = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)  # installed third-party packages and the standard library's own test suites


def python_stdlib_files() -> list[Path]:
    """The ``.py`` files of the running interpreter's standard library, sorted.

    The library directory is ``sysconfig.get_paths()["stdlib"]``; files under a directory
    named in :data:`EXCLUDED_DIRECTORIES` (third-party packages, ``test``/``tests`` packages
    such as ``Lib/test``, ``unittest/test``, ``lib2to3/tests``, ``idlelib/idle_test``) are left
    out; everything else (``idlelib``, ``turtledemo``, ``encodings``, ...) is real code and kept.

    Example:
        >>> files = python_stdlib_files()
        >>> any(path.name == "textwrap.py" for path in files)
        True
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if path.is_file()
        and not EXCLUDED_DIRECTORIES.intersection(path.relative_to(root).parts[:-1])
    )


def _docstrings(tree: ast.AST, prefix: str) -> Iterator[tuple[str, str]]:
    """``(qualified name, cleaned docstring)`` of ``tree`` and its classes and functions, in
    source order."""
    docstring = ast.get_docstring(tree, clean=True)
    if docstring:
        yield prefix, docstring
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            separator = ":" if isinstance(tree, ast.Module) else "."
            yield from _docstrings(node, f"{prefix}{separator}{node.name}")


def english_documents(files: Sequence[Path] | None = None) -> list[tuple[str, str]]:
    """English prose bundled with Python: ``(name, text)`` documents, in a fixed order.

    First every topic of the documentation bundled for ``help()``
    (``pydoc_data.topics.topics``; names ``topic:<key>``, sorted by key), then the docstrings
    of ``files`` (default :func:`python_stdlib_files`): each module's, class's and function's
    own docstring (names ``<module>`` or ``<module>:<Class>.<method>``), read with ``ast``
    (the modules are never imported), cleaned with ``inspect.cleandoc`` rules; empty ones
    are skipped.

    Example:
        >>> documents = english_documents(files=[])
        >>> documents[0][0].startswith("topic:"), len(documents) > 50
        (True, True)
    """
    from pydoc_data.topics import topics

    documents = [(f"topic:{key}", topics[key].strip()) for key in sorted(topics)]
    if files is None:
        files = python_stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in files:
        relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
        parts = relative.with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_bytes(), filename=str(path))
        documents.extend(_docstrings(tree, module))
    return documents
