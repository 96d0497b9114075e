"""Atomic file writes: a reader sees the old file or the whole new one, never a mix.

:func:`atomic_write` fills a temporary ``.<name>.XXXXXXXX.tmp`` beside the target, locked
(``flock``) while written, fsyncs it, renames it over the target and fsyncs the directory. A
write killed outright (SIGKILL, power loss) leaves its temporary behind; the next write into
that directory removes every ``.pt`` / ``.safetensors`` / ``.json`` temporary that no live
writer holds (:func:`remove_stale_temporaries`). Checkpoints, exports, dataset caches and the
teacher cache (shards and manifest) are all written through it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale temporaries are left alone
    fcntl = None  # type: ignore[assignment]

# what atomic_write's tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") names the temporary
# of a checkpoint, an export, a cache file or a cache manifest: 8 random characters
_TEMPORARY_NAME = re.compile(r"^\..+\.(pt|safetensors|json)\.[a-z0-9_]{8}\.tmp$")


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Remove the temporary files that killed writes left in ``directory``; return them.

    Only the names :func:`atomic_write` gives the temporaries of checkpoints, exports and
    caches (``.<name>.pt.XXXXXXXX.tmp``, ``.<name>.safetensors.XXXXXXXX.tmp``,
    ``.<name>.json.XXXXXXXX.tmp``) are considered, and
    only those no process holds locked: a write in progress keeps its file. Without ``fcntl``
    (not POSIX) nothing is removed.
    """
    directory = Path(directory)
    if fcntl is None or not directory.is_dir():
        return []
    removed = []
    for candidate in sorted(directory.iterdir()):
        if not _TEMPORARY_NAME.match(candidate.name) or not candidate.is_file():
            continue
        try:
            handle = os.open(candidate, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            candidate.unlink(missing_ok=True)  # still locked: a new writer sees it unlinked
            removed.append(candidate)
        except OSError:  # held by a live writer (or no locks here): leave it
            continue
        finally:
            os.close(handle)
    return removed


def _locked_temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, open and locked against stale-file cleanup."""
    while True:
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if fcntl is None:
            return handle, name
        fcntl.flock(handle, fcntl.LOCK_EX)
        if os.fstat(handle).st_nlink > 0:
            return handle, name
        os.close(handle)  # a cleanup removed it between its creation and our lock: again


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` so that readers see the old file or the complete new one, never a mix.

    ``write`` fills a temporary file in the same directory (locked while written); it is
    flushed and fsynced, renamed over ``path`` with ``os.replace`` and the directory is
    fsynced. On any error (Ctrl-C included) the temporary file is removed and ``path`` is
    untouched. Temporaries that earlier, killed writes left in the directory are removed first
    (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    handle, temp_name = _locked_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
            os.replace(temp_name, path)  # before close: the lock is held until the rename
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path
