"""Alignment of two tokenizations by character offsets, against a byte-level brute force."""

from __future__ import annotations

import pytest

from torchkd.data.align import align_offsets, boundary_ends, stream_offsets, teacher_windows
from torchkd.data.shared_vocabulary import token_bytes

from .pair import STRINGS


def encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], [tuple(span) for span in encoded["offset_mapping"]]


def brute_force(student, teacher, text: str) -> list[tuple[int, int]]:
    """Every (i, j) whose token prefixes are the same bytes, ending on a character boundary
    (the prefix is whole UTF-8): the groups' last tokens, found without offsets."""

    def prefix_lengths(tokenizer) -> list[int]:
        ids, _ = encode(tokenizer, text)
        pieces = token_bytes(tokenizer)
        lengths, total = [], 0
        for token in ids:
            total += len(pieces[token])
            lengths.append(total)
        return lengths

    encoded = text.encode("utf-8")
    boundaries = {len(text[:c].encode("utf-8")) for c in range(len(text) + 1)}
    student_at = {n: i for i, n in enumerate(prefix_lengths(student)) if n in boundaries}
    teacher_at = {n: j for j, n in enumerate(prefix_lengths(teacher)) if n in boundaries}
    assert max(student_at, default=0) == max(teacher_at, default=0) == len(encoded)
    return [(student_at[n], teacher_at[n]) for n in sorted(student_at.keys() & teacher_at.keys())]


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_alignment_matches_the_byte_level_brute_force(tokenizer_pair, text: str) -> None:
    student, teacher, _ = tokenizer_pair
    (student_ids, student_spans), (teacher_ids, teacher_spans) = (
        encode(student, text),
        encode(teacher, text),
    )
    pairs = align_offsets(student_spans, teacher_spans)
    assert pairs == brute_force(student, teacher, text)
    for i, j in pairs:  # each pair ends the same text on both sides
        assert student.decode(student_ids[: i + 1]) == teacher.decode(teacher_ids[: j + 1])
    if text:
        assert pairs[-1] == (len(student_ids) - 1, len(teacher_ids) - 1)


def test_the_tokenizers_differ_on_the_strings(tokenizer_pair) -> None:
    student, teacher, _ = tokenizer_pair
    assert len(student) > len(teacher)
    differ = [text for text in STRINGS if encode(student, text)[0] != encode(teacher, text)[0]]
    assert len(differ) >= 4


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_equal_tokenizations_align_as_the_identity(tokenizer_pair, text: str) -> None:
    student, _, _ = tokenizer_pair
    _, spans = encode(student, text)
    assert align_offsets(spans, spans) == [(i, i) for i in range(len(spans))]


def test_tokens_splitting_a_character_end_no_boundary() -> None:
    # three byte tokens of one character, then a word
    spans = [(0, 1), (0, 1), (0, 1), (1, 4)]
    assert boundary_ends(spans) == {1: 2, 4: 3}
    assert align_offsets(spans, [(0, 4)]) == [(3, 0)]
    with pytest.raises(ValueError, match="start 3 > end 2"):
        boundary_ends([(3, 2)])


def test_streams_give_each_eos_a_group_and_windows_keep_whole_groups() -> None:
    student = stream_offsets([[(0, 2), (2, 4)], [(0, 3)]], [4, 3])
    teacher = stream_offsets([[(0, 4)], [(0, 1), (1, 3)]], [4, 3])
    assert student == [(0, 2), (2, 4), (4, 5), (5, 8), (8, 9)]
    assert teacher == [(0, 4), (4, 5), (5, 6), (6, 8), (8, 9)]
    pairs = align_offsets(student, teacher)
    assert pairs == [(1, 0), (2, 1), (3, 3), (4, 4)]
    # windows of 2 student tokens: [0, 1] holds group 0; [2, 3] holds the eos and group 2
    assert teacher_windows(pairs, 2, 2) == [(0, 1, [(1, 0)]), (1, 4, [(0, 0), (1, 2)])]
    # a window that cuts its only group holds none
    assert teacher_windows([(3, 1)], 2, 2) == [(0, 0, []), (0, 0, [])]
