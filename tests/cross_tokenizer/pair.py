"""Two byte-level BPE tokenizers trained offline on the same corpus with different vocabulary
sizes (1024 and 512 entries: small enough for tiny models), and hand-made strings to align."""

from __future__ import annotations

import textwrap
from pathlib import Path

from torchkd.data.tokenizer import train_bpe_tokenizer

STUDENT_VOCAB, TEACHER_VOCAB = 1024, 512
STRINGS = [
    "plain words, then  two spaces and\ttabs\n\nand blank lines",
    "unicode: héllo wörld, naïve café, Ελληνικά, 日本語のテキスト",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 glued",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    "    indented\n        deeper\n\t\tmixed\r\nwindows line",
    "x",
    "",
]


def corpus_texts() -> list[str]:
    """Python source of the standard library's textwrap module and the strings above."""
    source = Path(textwrap.__file__).read_text(encoding="utf-8")
    return [source, *STRINGS * 3]


def train_pair(directory: Path) -> tuple[object, object]:
    """``(student, teacher)``: vocabularies of 1024 and 512 entries, on the same texts."""
    texts = corpus_texts()
    student = train_bpe_tokenizer(texts, STUDENT_VOCAB, directory / "student")
    teacher = train_bpe_tokenizer(texts, TEACHER_VOCAB, directory / "teacher")
    return student, teacher
