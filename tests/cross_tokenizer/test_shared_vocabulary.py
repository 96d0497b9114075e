"""The map of the tokens two tokenizers share (the hybrid loss's ``shared_ids``)."""

from __future__ import annotations

from pathlib import Path

import torch

from torchkd.data.shared_vocabulary import shared_vocabulary, token_bytes
from torchkd.data.tokenizer import train_bpe_tokenizer


def test_the_shared_map_of_two_tokenizers(tokenizer_pair) -> None:
    student, teacher, _ = tokenizer_pair
    shared = shared_vocabulary(student, teacher)
    student_bytes, teacher_bytes = token_bytes(student), token_bytes(teacher)
    # BPE on one corpus: the smaller vocabulary's merges are the larger's first ones
    assert len(shared) == len(teacher) < len(student)
    assert all(student_bytes[s] == teacher_bytes[t] for s, t in shared.tolist())
    assert shared[:, 0].unique().numel() == shared[:, 1].unique().numel() == len(shared)
    unmapped = set(range(len(teacher))) - set(shared[:, 1].tolist())
    assert all(teacher_bytes[t] not in set(student_bytes.values()) for t in unmapped)
    own = shared_vocabulary(student, student)
    assert torch.equal(own, torch.arange(len(student)).repeat(2, 1).T)
    eos = (student.eos_token_id, teacher.eos_token_id)
    assert list(eos) in shared.tolist()


def test_tokenizers_of_other_texts_share_their_common_strings(tokenizer_pair, tmp_path: Path):
    student, _, _ = tokenizer_pair
    other = train_bpe_tokenizer(["zebra quagga zebra okapi " * 20], 300, tmp_path)
    shared = shared_vocabulary(student, other)
    student_bytes, other_bytes = token_bytes(student), token_bytes(other)
    assert all(student_bytes[s] == other_bytes[t] for s, t in shared.tolist())
    merged = {t for t in range(258, len(other))}  # the merges: strings such as b" zebra"
    in_student = set(student_bytes.values())
    expected = {t for t in merged if other_bytes[t] in in_student}
    assert set(shared[:, 1].tolist()) & merged == expected
    assert len(shared) >= 258 and (shared[:, 0] != shared[:, 1]).any()
