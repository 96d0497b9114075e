"""The language-model demo's corpus and tokenizer: a seeded sample of the running interpreter's
standard-library source files, and a byte-level BPE tokenizer trained offline on the files of
its training split (cached)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchkd.config import DataConfig

__all__ = ["CorpusSettings", "corpus_files", "demo_tokenizer", "training_files"]


@dataclass(frozen=True)
class CorpusSettings:
    """Which standard-library files the demo reads.

    The files of :func:`torchkd.data.corpora.python_stdlib_files` (tests and site-packages
    excluded), shuffled with ``seed``, are taken in that order until they hold ``max_chars``
    characters; files under ``min_file_chars`` or over ``max_file_chars`` are skipped (one large
    module would otherwise fill a split on its own).

    Attributes:
        max_chars: total size of the sample, in characters (bytes of UTF-8 source).
        seed: seed of the shuffle.
        min_file_chars: smallest file taken.
        max_file_chars: largest file taken.
    """

    max_chars: int = 700_000
    seed: int = 0
    min_file_chars: int = 500
    max_file_chars: int = 60_000


def corpus_files(settings: CorpusSettings, files: Sequence[Path] | None = None) -> list[Path]:
    """The demo's files: a seeded sample of ``files`` (default: the standard library's source),
    returned sorted by path (the text dataset splits them by a permutation of its own).

    Example:
        >>> sample = corpus_files(CorpusSettings(max_chars=20_000))
        >>> 20_000 <= sum(path.stat().st_size for path in sample) < 80_000
        True
    """
    from torchkd.data.corpora import python_stdlib_files

    pool = list(python_stdlib_files() if files is None else files)
    random.Random(settings.seed).shuffle(pool)
    chosen: list[Path] = []
    total = 0
    for path in pool:
        if total >= settings.max_chars:
            break
        size = path.stat().st_size
        if settings.min_file_chars <= size <= settings.max_file_chars:
            chosen.append(path)
            total += size
    if total < settings.max_chars:
        raise ValueError(
            f"the corpus holds {total} characters in files of {settings.min_file_chars} to "
            f"{settings.max_file_chars} characters, fewer than max_chars={settings.max_chars}"
        )
    return sorted(chosen)


def training_files(files: Sequence[Path], data: DataConfig) -> list[Path]:
    """The files the ``text`` dataset of ``data`` (``files``, ``val_fraction``,
    ``test_fraction``, split seed ``data.seed``) puts in its training split: one document per
    file, assigned by :func:`torchkd.data.documents.split_documents`."""
    from torchkd.data.documents import resolve_files, split_documents

    paths = resolve_files(list(files))
    parts = split_documents(
        len(paths), data.val_fraction, float(data.kwargs.get("test_fraction", 0.1)), data.seed
    )
    return [paths[index] for index in parts["train"]]


def demo_tokenizer(files: Sequence[Path], vocab_size: int) -> Path:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``files`` (the training
    split), cached as ``demo_lm/tokenizer-<key>`` under :func:`torchkd.data.cache_dir`, the key
    a hash of the files' bytes, the size and the ``tokenizers`` version; returns its directory."""
    import shutil
    import tempfile

    from torchkd.data import cache_dir
    from torchkd.data.base import cache_key
    from torchkd.data.documents import file_digest
    from torchkd.data.tokenizer import train_bpe_tokenizer

    settings = {
        "files": [file_digest(path) for path in files],
        "vocab_size": vocab_size,
        "tokenizers": metadata.version("tokenizers"),
    }
    directory = cache_dir() / "demo_lm" / f"tokenizer-{cache_key(settings)}"
    if (directory / "tokenizer.json").is_file():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=directory.name + ".tmp"))
    try:
        train_bpe_tokenizer(list(files), vocab_size, staging)
        staging.rename(directory)  # atomic: a reader sees no tokenizer or a whole one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
