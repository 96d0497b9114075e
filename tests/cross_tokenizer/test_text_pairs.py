"""The ``text`` dataset with ``teacher_tokenizer``: the student's samples unchanged, each with
the same text in the teacher's tokens and the alignment; cached, keyed by both fingerprints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import torchkd.data.text as text_module
from torchkd.data import create_dataset
from torchkd.data.text import TextDataset
from torchkd.data.tokenizer import tokenizer_fingerprint

from .pair import STRINGS


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("documents")
    for number, text in enumerate(STRINGS * 3):
        (root / f"doc{number:02d}.txt").write_text(text + f" #{number}", encoding="utf-8")
    return root


def load(documents: Path, directory: Path, split: str = "train", **kwargs: Any) -> TextDataset:
    settings = {
        "files": str(documents / "*.txt"),
        "tokenizer": directory / "student",
        "seq_len": 16,
        "cache": documents / "cache",
        **kwargs,
    }
    return create_dataset("text", split, **settings)  # type: ignore[return-value]


def test_samples_carry_the_teachers_tokens_aligned(documents: Path, tokenizer_pair) -> None:
    student, teacher, directory = tokenizer_pair
    plain = load(documents, directory)
    paired = load(documents, directory, teacher_tokenizer=directory / "teacher")
    assert paired.teacher_tokenizer_fingerprint == tokenizer_fingerprint(teacher)
    assert plain.teacher_tokenizer_fingerprint is None
    batch, plain_batch = paired[list(range(len(paired)))], plain[list(range(len(plain)))]
    for key in ("labels", "index"):
        assert torch.equal(batch[key], plain_batch[key])
    assert torch.equal(batch["inputs"]["input_ids"], plain_batch["inputs"]["input_ids"])
    teacher_ids = batch["teacher_inputs"]["input_ids"]
    teacher_mask = batch["teacher_inputs"]["attention_mask"]
    positions = batch["teacher_positions"]
    assert positions.shape == batch["labels"].shape and teacher_ids.shape == teacher_mask.shape
    compared = 0
    for row in range(len(paired)):
        student_row = batch["inputs"]["input_ids"][row].tolist()
        teacher_row = teacher_ids[row][teacher_mask[row].bool()].tolist()
        aligned = (positions[row] >= 0).nonzero().squeeze(-1).tolist()
        assert positions[row][aligned].tolist() == sorted(positions[row][aligned].tolist())
        if not aligned:
            continue
        # the teacher's row starts where the student's first whole group starts
        first, first_teacher = aligned[0], int(positions[row, aligned[0]])
        start = _group_start(student, student_row, teacher, teacher_row, first, first_teacher)
        for t in aligned:
            j = int(positions[row, t])
            assert student.decode(student_row[start : t + 1]) == teacher.decode(
                teacher_row[: j + 1]
            )
            compared += 1
        # the teacher's row ends with the last aligned group
        assert int(positions[row, aligned[-1]]) == len(teacher_row) - 1
    assert compared > len(paired)


def _group_start(student, student_row, teacher, teacher_row, t: int, j: int) -> int:
    """The student position where the teacher's row starts: the shortest student suffix of
    ``student_row[: t + 1]`` that decodes to the teacher row's first group."""
    target = teacher.decode(teacher_row[: j + 1])
    for start in range(t, -1, -1):
        if student.decode(student_row[start : t + 1]) == target:
            return start
    raise AssertionError(f"no student tokens before {t} spell {target!r}")


def test_the_students_own_tokenizer_gives_the_identity(documents: Path, tokenizer_pair) -> None:
    _, _, directory = tokenizer_pair
    paired = load(documents, directory, teacher_tokenizer=directory / "student")
    batch = paired[list(range(len(paired)))]
    assert torch.equal(batch["teacher_inputs"]["input_ids"], batch["inputs"]["input_ids"])
    assert torch.equal(batch["teacher_inputs"]["attention_mask"], batch["inputs"]["attention_mask"])
    assert torch.equal(batch["teacher_positions"], torch.arange(16).expand(len(paired), 16))


def test_the_cache_is_keyed_by_the_teacher_tokenizer_and_read_back(
    documents: Path, tokenizer_pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, directory = tokenizer_pair
    cache = {"cache": tmp_path / "cache"}
    plain = load(documents, directory, **cache)
    first = load(documents, directory, teacher_tokenizer=directory / "teacher", **cache)
    own = load(documents, directory, teacher_tokenizer=directory / "student", **cache)
    assert len(list((tmp_path / "cache" / "text").iterdir())) == 3
    assert len({plain.fingerprint, first.fingerprint, own.fingerprint}) == 3

    def no_build(*args: object) -> None:
        raise AssertionError("a cache hit must not tokenize")

    monkeypatch.setattr(text_module, "_build", no_build)
    again = load(documents, directory, teacher_tokenizer=directory / "teacher", **cache)
    assert again.fingerprint == first.fingerprint
    assert again.tensors.keys() == first.tensors.keys() >= {"teacher_positions"}
    assert all(torch.equal(again.tensors[k], first.tensors[k]) for k in first.tensors)


def test_prompt_completion_is_refused(documents: Path, tokenizer_pair, tmp_path: Path) -> None:
    _, _, directory = tokenizer_pair
    record = tmp_path / "pairs.jsonl"
    record.write_text('{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(ValueError, match="teacher_tokenizer needs format='text'"):
        load(
            documents,
            directory,
            files=str(record),
            format="prompt_completion",
            teacher_tokenizer=directory / "teacher",
        )
