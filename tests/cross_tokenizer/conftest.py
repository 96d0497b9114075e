from __future__ import annotations

from pathlib import Path

import pytest

from .pair import train_pair


@pytest.fixture(scope="session")
def tokenizer_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, Path]:
    """``(student, teacher, directory)``: the two tokenizers of :func:`train_pair`, saved under
    ``directory / "student"`` and ``directory / "teacher"``."""
    directory = tmp_path_factory.mktemp("tokenizers")
    student, teacher = train_pair(directory)
    return student, teacher, directory
