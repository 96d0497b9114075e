"""Alignment of two tokenizations of the same text by character offsets, for distillation
across tokenizers (student and teacher with different tokenizers).

Each token covers a character span ``[start, end)`` of the text (a fast tokenizer's
``return_offsets_mapping``). A character position ``c`` is a *boundary* of a tokenization when
some token ends at ``c`` and the next token starts at or after ``c``; byte-level tokens that
split one multi-byte character share its span, so no boundary falls inside a character. The
common boundaries of the two tokenizations cut the text into *groups*, the minimal common
segmentation: each group is a run of consecutive student tokens and a run of consecutive
teacher tokens covering the same characters. The last token of a group on each side predicts
the first token of the next group, which on both sides starts at the same character: those two
positions' next-token distributions are compared (:func:`align_offsets`).

For a packed text stream (documents joined by the eos token), the eos token is given a
one-character span of its own on both sides, so it is a group of its own
(:func:`stream_offsets`); :func:`teacher_windows` cuts the teacher's stream into one row per
student window.

Example:
    >>> student = [(0, 3), (3, 9)]  # "the" " quick"
    >>> teacher = [(0, 1), (1, 3), (3, 4), (4, 9)]  # "t" "he" " " "quick"
    >>> align_offsets(student, teacher)
    [(0, 1), (1, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["align_offsets", "boundary_ends", "stream_offsets", "teacher_windows"]

Span = tuple[int, int]


def boundary_ends(offsets: Sequence[Span]) -> dict[int, int]:
    """``{boundary: index of the last token ending there}`` for one tokenization's spans.

    Token ``i`` ends a boundary at ``end_i`` when it is the last token or the next token
    starts at or after ``end_i`` (so tokens sharing one character's span end none)."""
    ends: dict[int, int] = {}
    for index, (start, end) in enumerate(offsets):
        if start > end:
            raise ValueError(f"offsets: token {index} has start {start} > end {end}")
        following = offsets[index + 1][0] if index + 1 < len(offsets) else None
        if following is None or following >= end:
            ends[end] = index
    return ends


def align_offsets(student: Sequence[Span], teacher: Sequence[Span]) -> list[tuple[int, int]]:
    """``[(i, j), ...]``: student token ``i`` and teacher token ``j`` end the same group (the
    groups of the module docstring), in text order (both indices increasing).

    Equal spans give the identity ``[(0, 0), (1, 1), ...]``. A token without characters (an
    empty span) joins the group of the boundary where it stands.

    Args:
        student: the student's token spans ``(start, end)`` in characters, in text order.
        teacher: the teacher's token spans of the same text.
    """
    student_ends, teacher_ends = boundary_ends(student), boundary_ends(teacher)
    return [
        (student_ends[end], teacher_ends[end])
        for end in sorted(student_ends.keys() & teacher_ends.keys())
    ]


def stream_offsets(documents: Sequence[Sequence[Span]], lengths: Sequence[int]) -> list[Span]:
    """The spans of a packed stream: each document's token spans shifted to its place, then a
    one-character span for the eos token that follows it.

    Args:
        documents: each document's token spans (characters of that document).
        lengths: each document's length in characters.
    """
    stream: list[Span] = []
    shift = 0
    for spans, length in zip(documents, lengths, strict=True):
        stream.extend((start + shift, end + shift) for start, end in spans)
        shift += length
        stream.append((shift, shift + 1))  # the eos token
        shift += 1
    return stream


def teacher_windows(
    pairs: Sequence[tuple[int, int]], num_windows: int, seq_len: int
) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """For each student window ``[w * seq_len, (w + 1) * seq_len)`` of a packed stream: the
    teacher tokens ``[first, last)`` of the groups lying wholly inside the window and the
    aligned pairs ``(student position, teacher position)`` relative to the two windows.

    A window's first group may start before the window (a student token sequence cut by the
    window): it is left out, so the teacher reads only characters the student reads.

    Args:
        pairs: the stream's :func:`align_offsets`.
        num_windows: the student windows.
        seq_len: student tokens per window.
    """
    ends = np.asarray([pair[0] for pair in pairs], dtype=np.int64).reshape(-1)
    teacher_ends = np.asarray([pair[1] for pair in pairs], dtype=np.int64).reshape(-1)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else ends
    teacher_starts = np.concatenate([[0], teacher_ends[:-1] + 1]) if len(ends) else ends
    windows = []
    for window in range(num_windows):
        low, high = window * seq_len, (window + 1) * seq_len
        first = int(np.searchsorted(starts, low, side="left"))
        last = int(np.searchsorted(ends, high, side="left"))  # groups ending before high
        if first >= last:
            windows.append((0, 0, []))
            continue
        offset = int(teacher_starts[first])
        pairs_in = [(int(ends[k]) - low, int(teacher_ends[k]) - offset) for k in range(first, last)]
        windows.append((offset, int(teacher_ends[last - 1]) + 1, pairs_in))
    return windows
