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
    excluded), shuffled with ``seed``, are taken in that order: the students' corpus until it
    holds ``student_chars`` characters, then the teacher's until it holds ``teacher_chars``.
    The two are disjoint: the teacher learns from other files than the ones the students are
    distilled on and tested on (as a pretrained teacher has seen other data), so its outputs on
    the students' files are those of a model that never saw them. Files under
    ``min_file_chars`` or over ``max_file_chars`` are skipped (one large module would otherwise
    fill a split on its own).

    Attributes:
        student_chars: size of the students' corpus (split into train / val / test), in
            characters (bytes of UTF-8 source).
        teacher_chars: size of the teacher's corpus (split into train / val).
        seed: seed of the shuffle.
        min_file_chars: smallest file taken.
        max_file_chars: largest file taken.
    """

    student_chars: int = 700_000
    teacher_chars: int = 1_100_000
    seed: int = 0
    min_file_chars: int = 500
    max_file_chars: int = 60_000


def corpus_files(
    settings: CorpusSettings, files: Sequence[Path] | None = None
) -> tuple[list[Path], list[Path]]:
    """The students' and the teacher's files: disjoint seeded samples of ``files`` (default:
    the standard library's source), each sorted by path (the text dataset splits them by a
    permutation of its own).

    Example:
        >>> students, teacher = corpus_files(CorpusSettings(20_000, 30_000))
        >>> set(students).isdisjoint(teacher), sum(p.stat().st_size for p in teacher) >= 30_000
        (True, True)
    """
    from torchkd.data.corpora import python_stdlib_files

    pool = list(python_stdlib_files() if files is None else files)
    random.Random(settings.seed).shuffle(pool)
    pool = [
        path
        for path in pool
        if settings.min_file_chars <= path.stat().st_size <= settings.max_file_chars
    ]
    corpora: list[list[Path]] = []
    for wanted in (settings.student_chars, settings.teacher_chars):
        chosen: list[Path] = []
        total = 0
        while pool and total < wanted:
            chosen.append(pool.pop(0))
            total += chosen[-1].stat().st_size
        if total < wanted:
            raise ValueError(
                f"the corpus holds too few characters in files of {settings.min_file_chars} to "
                f"{settings.max_file_chars} characters for {settings}"
            )
        corpora.append(sorted(chosen))
    return corpora[0], corpora[1]


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
