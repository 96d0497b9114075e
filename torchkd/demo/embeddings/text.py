"""Offline English for the embeddings demo: documents bundled with Python, cut into sentences.

Documents are the documentation topics shipped with the interpreter (``pydoc_data.topics``,
one document per topic) and the docstrings of the standard library's modules (one document per
module), from :func:`torchkd.data.corpora.english_documents`. Sentences come from prose paragraphs
only (code blocks, doctest lines and reST tables are dropped), split by a few fixed rules,
filtered by length, deduplicated; the held-out split is a seeded permutation of *documents*, so
no held-out sentence shares a document with a training one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "SentenceSplits",
    "module_documents",
    "sentence_splits",
    "split_sentences",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
_MARKUP = re.compile(r"[`*|]|:\w+:|\.\. \w+::")


def module_documents(limit: int | None = None) -> list[tuple[str, str]]:
    """The English documents of :func:`torchkd.data.corpora.english_documents` with each
    module's docstrings joined into one document (``topic:<key>`` documents stay as they are),
    so that a split by document never separates a module's docstrings.

    Args:
        limit: keep only the first ``limit`` documents; within the documentation topics
            (which come first) no source file is read.

    Example:
        >>> documents = module_documents(limit=3)
        >>> [name.startswith("topic:") for name, _ in documents]
        [True, True, True]
    """
    from pydoc_data.topics import topics

    from torchkd.data.corpora import english_documents

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    files = [] if limit is not None and limit <= len(topics) else None
    grouped: dict[str, list[str]] = {}
    for name, text in english_documents(files=files):
        key = name if name.startswith("topic:") else name.partition(":")[0]
        grouped.setdefault(key, []).append(text)
    return [(key, "\n\n".join(texts)) for key, texts in grouped.items()][:limit]


def _prose_paragraphs(text: str) -> Iterable[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if not lines or any(
            line.startswith((" ", "\t")) or line.lstrip().startswith((">>>", "...", "+-", "=="))
            for line in lines
        ):
            continue  # code, doctests, tables and indented blocks
        yield " ".join(line.strip() for line in lines)


def split_sentences(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """The prose sentences of ``text``, in order.

    Rules: paragraphs are separated by blank lines; a paragraph with an indented line, a
    doctest prompt or a table border is dropped; a paragraph's lines are joined; sentences end
    at ``.``, ``!`` or ``?`` followed by whitespace and a capital letter, a quote or a
    parenthesis. A sentence is kept when it ends with ``.``, ``!`` or ``?``, has
    ``min_words`` to ``max_words`` words, no reST markup (backquotes, ``*``, ``|``, roles,
    directives) and at least 80 % letters and spaces.

    Example:
        >>> split_sentences("The cat sat on the warm mat. It was very happy there today!")
        ['The cat sat on the warm mat.', 'It was very happy there today!']
        >>> split_sentences("Too short. Code follows:\\n\\n    x = 1")
        []
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(
            f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}"
        )
    sentences = []
    for paragraph in _prose_paragraphs(text):
        for sentence in _SENTENCE_END.split(re.sub(r"\s+", " ", paragraph).strip()):
            words = len(sentence.split())
            letters = sum(char.isalpha() or char == " " for char in sentence)
            if (
                sentence.endswith((".", "!", "?"))
                and min_words <= words <= max_words
                and not _MARKUP.search(sentence)
                and letters >= 0.8 * len(sentence)
            ):
                sentences.append(sentence)
    return sentences


@dataclass(frozen=True)
class SentenceSplits:
    """Deduplicated sentences by split (each list in document order)."""

    train: list[str]
    val: list[str]
    test: list[str]

    def split(self, name: str) -> list[str]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


def sentence_splits(
    documents: list[tuple[str, str]],
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_words: int = 6,
    max_words: int = 40,
) -> SentenceSplits:
    """Split ``documents`` into train / val / test by a seeded permutation of the documents,
    then cut each into sentences (:func:`split_sentences`).

    The first ``test_fraction`` of the permuted documents are the test split, the next
    ``val_fraction`` validation, the rest training. A sentence appears once overall: its first
    occurrence in the order test, val, train (a repeated sentence never reaches training).

    Example:
        >>> documents = [(f"d{i}", f"Sentence number {i} is written here.") for i in range(20)]
        >>> splits = sentence_splits(documents, val_fraction=0.1, test_fraction=0.2)
        >>> len(splits.train), len(splits.val), len(splits.test)
        (14, 2, 4)
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    test_count = round(test_fraction * len(documents))
    val_count = round(val_fraction * len(documents))
    parts = {
        "test": order[:test_count],
        "val": order[test_count : test_count + val_count],
        "train": order[test_count + val_count :],
    }
    seen: set[str] = set()
    result: dict[str, list[str]] = {}
    for split, indices in parts.items():
        kept = []
        for index in sorted(indices):
            for sentence in split_sentences(documents[index][1], min_words, max_words):
                if sentence not in seen:
                    seen.add(sentence)
                    kept.append(sentence)
        result[split] = kept
    return SentenceSplits(**result)
