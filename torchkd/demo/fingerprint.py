"""What determines the demo's teacher, as one dictionary: the key of its weights in the cache.

A cached teacher may be reused only if training it again would give the same weights. Those
depend on the resolved recipe *and* on the code and libraries that train it: a teacher cached by
an older torchkd (another loader order, another loss rounding) must not be served to a newer
one under the same recipe. The fingerprint therefore holds:

- the resolved teacher recipe;
- a SHA-256 digest of the torchkd source files a training run can execute: every module below
  layer 7 (what :func:`torchkd.config.fit_recipe` may import, by the layering rule of
  ``docs/architecture.md``) and the demo's own teacher code (``demo/arms.py``, which picks and
  exports the checkpoint);
- the versions of torch, numpy and mnist1d (the data generator).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "library_version",
    "package_root",
    "source_digest",
    "teacher_fingerprint",
    "teacher_source_files",
]

# Modules of layers 7-8 (search, teacher selection, the Trainer integration, CLI): no training
# run imports them.
# The demo (layer 7) is excluded too except ``demo/arms.py``, which trains and exports the teacher.
_NOT_TRAINING = ("tune", "demo", "integrations", "select_teacher.py", "cli", "__main__.py")
_DEMO_TEACHER_CODE = "demo/arms.py"
_LIBRARIES = ("torch", "numpy", "mnist1d")


def package_root() -> Path:
    """The directory of the imported ``torchkd`` package."""
    import torchkd

    return Path(torchkd.__file__).parent


def teacher_source_files(root: Path | None = None) -> list[Path]:
    """The ``.py`` files under ``root`` (default: the torchkd package) that train the teacher,
    sorted by their path relative to ``root``."""
    root = package_root() if root is None else root
    files = [
        path
        for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] not in _NOT_TRAINING
        or path.relative_to(root).as_posix() == _DEMO_TEACHER_CODE
    ]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def source_digest(files: Iterable[Path], root: Path) -> str:
    """SHA-256 over each file's path relative to ``root`` and its bytes, in the given order.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.py").write_text("x = 1\\n")
        >>> before = source_digest([folder / "a.py"], folder)
        >>> _ = (folder / "a.py").write_text("x = 2\\n")
        >>> before == source_digest([folder / "a.py"], folder)
        False
    """
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        for part in (name, content):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def library_version(library: str) -> str:
    """The installed version of ``library`` (``"absent"`` when it is not installed)."""
    if library == "torch":  # the imported build (e.g. "2.13.0+cpu"), which may be patched
        import torch

        return str(torch.__version__)
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "absent"


def teacher_fingerprint(resolved_recipe: dict[str, Any]) -> dict[str, Any]:
    """Everything the teacher's weights depend on: recipe, torchkd source digest, versions."""
    root = package_root()
    return {
        "recipe": resolved_recipe,
        "torchkd_source": source_digest(teacher_source_files(root), root),
        "versions": {library: library_version(library) for library in _LIBRARIES},
    }
