"""Documents of local text files: globs resolved, ``.jsonl`` records read, file digests.

A ``.jsonl`` file holds one document per line (a JSON object); any other file is one document
(its UTF-8 text). Blank ``.jsonl`` lines are skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["Document", "file_digest", "read_documents", "resolve_files", "split_documents"]

FORMATS: tuple[str, ...] = ("text", "prompt_completion")
_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
}


class Document(NamedTuple):
    """One document: where it comes from (``file`` or ``file:line``) and its text fields
    (``("text",)`` or ``("prompt", "completion")`` by format)."""

    source: str
    fields: tuple[str, ...]


def resolve_files(files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files named by ``files`` (paths or globs, ``**`` recursive), in the given order,
    each glob's matches sorted, duplicates dropped.

    Raises ``ValueError`` naming every pattern that matched no file.
    """
    patterns = [files] if isinstance(files, str | os.PathLike) else list(files)
    if not patterns:
        raise ValueError("files: expected at least one path or glob, got none")
    resolved: dict[Path, None] = {}
    unmatched: list[str] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        else:
            matches = [Path(text)] if Path(text).is_file() else []
        if not matches:
            unmatched.append(text)
        resolved.update(dict.fromkeys(matches))
    if unmatched:
        raise ValueError(
            f"files: no file matched {unmatched} (relative paths start at {os.getcwd()})"
        )
    return list(resolved)


def file_digest(path: Path) -> str:
    """SHA-256 (hex) of the file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error


def _jsonl_documents(path: Path, fields: tuple[str, ...], text_format: str) -> list[Document]:
    documents = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error.msg})") from error
        if not isinstance(record, dict) or not all(
            isinstance(record.get(name), str) for name in fields
        ):
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"{where}: format={text_format!r} needs a JSON object with string field(s) "
                f"{list(fields)}, got {found}"
            )
        documents.append(Document(where, tuple(record[name] for name in fields)))
    return documents


def read_documents(files: Sequence[Path], text_format: str) -> list[Document]:
    """The documents of ``files`` in order: every record of a ``.jsonl`` file (fields ``text``,
    or ``prompt`` and ``completion``), every other file whole (``format="text"`` only)."""
    if text_format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {text_format!r}")
    fields = _FIELDS[text_format]
    documents: list[Document] = []
    for path in files:
        if path.suffix == ".jsonl":
            documents.extend(_jsonl_documents(path, fields, text_format))
        elif text_format == "text":
            documents.append(Document(str(path), (_read_text(path),)))
        else:
            raise ValueError(
                f"{path}: format='prompt_completion' reads .jsonl files with 'prompt' and "
                "'completion' fields; a whole file is one plain-text document (format='text')"
            )
    return documents


def split_documents(
    num_documents: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Seeded disjoint document indices per split (each sorted, so splits keep file order).

    A permutation of the documents drawn from ``torch.Generator().manual_seed(seed)`` gives
    its first ``round(test_fraction * n)`` documents to ``test``, the next
    ``round(val_fraction * n)`` to ``val`` and the rest to ``train``.

    Example:
        >>> parts = split_documents(10, 0.2, 0.1, seed=0)
        >>> [len(parts[s]) for s in ("train", "val", "test")]
        [7, 2, 1]
    """
    permutation = torch.randperm(num_documents, generator=torch.Generator().manual_seed(seed))
    num_test = round(test_fraction * num_documents)
    num_val = round(val_fraction * num_documents)
    parts = {
        "test": permutation[:num_test],
        "val": permutation[num_test : num_test + num_val],
        "train": permutation[num_test + num_val :],
    }
    return {split: sorted(indices.tolist()) for split, indices in parts.items()}
