"""The teacher's side of the ``text`` dataset when the teacher has a tokenizer of its own
(``data.kwargs.teacher_tokenizer``): the same documents tokenized by the teacher, one teacher
row per student window, and the alignment of the two (:mod:`torchkd.data.align`).

A student window is the ``seq_len`` tokens of the plain dataset, unchanged. Its teacher row is
the teacher's tokens of the groups lying wholly inside the window (the characters the student
reads, but a group cut by the window's start), right-padded to the split's widest row.
``teacher_positions[t]`` is the teacher position whose next-token distribution is compared
with student position ``t``'s (the last token of the same group on both sides), or ``-1``
where student token ``t`` does not end a group (:data:`torchkd.lm.aligned.TEACHER_POSITIONS`).
With the student's own tokenizer, every row is the student's window and ``teacher_positions``
is ``0, 1, ..., seq_len - 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from torchkd.data.align import align_offsets, stream_offsets, teacher_windows

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["encode_teacher_windows"]


def _tokenize_with_offsets(
    tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    if not texts:
        return [], []
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer: {type(tokenizer).__name__} is not a fast tokenizer; aligning two "
            "tokenizations needs each token's character offsets (return_offsets_mapping), "
            "which only fast (Rust) tokenizers give"
        )
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [[(int(s), int(e)) for s, e in spans] for spans in encoded["offset_mapping"]]
    return encoded["input_ids"], offsets


def encode_teacher_windows(
    texts: list[str],
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    teacher_eos: int,
    teacher_pad: int,
) -> dict[str, Tensor]:
    """``teacher_input_ids`` / ``teacher_attention_mask`` ``[N, W]`` and ``teacher_positions``
    ``[N, seq_len]`` for the ``N`` student windows of ``texts`` packed as the ``text`` format
    packs them (each document followed by the eos token).

    Args:
        texts: the split's documents, in order.
        student_tokenizer: the student's tokenizer (it gives the windows).
        teacher_tokenizer: the teacher's tokenizer.
        seq_len: student tokens per window.
        teacher_eos: the teacher's eos token id (ends each document of the teacher's stream).
        teacher_pad: the teacher's pad token id (fills each row past its tokens).
    """
    lengths = [len(text) for text in texts]
    student_ids, student_spans = _tokenize_with_offsets(student_tokenizer, texts)
    teacher_ids, teacher_spans = _tokenize_with_offsets(teacher_tokenizer, texts)
    pairs = align_offsets(
        stream_offsets(student_spans, lengths), stream_offsets(teacher_spans, lengths)
    )
    teacher_stream = [token for ids in teacher_ids for token in (*ids, teacher_eos)]
    num_windows = sum(len(ids) + 1 for ids in student_ids) // seq_len
    windows = teacher_windows(pairs, num_windows, seq_len)
    width = max([last - first for first, last, _ in windows], default=0)
    width = max(width, 1)
    input_ids = torch.full((num_windows, width), teacher_pad, dtype=torch.long)
    attention_mask = torch.zeros((num_windows, width), dtype=torch.long)
    positions = torch.full((num_windows, seq_len), -1, dtype=torch.long)
    for row, (first, last, aligned) in enumerate(windows):
        input_ids[row, : last - first] = torch.tensor(teacher_stream[first:last], dtype=torch.long)
        attention_mask[row, : last - first] = 1
        if aligned:
            student_at, teacher_at = zip(*aligned, strict=True)
            positions[row, list(student_at)] = torch.tensor(teacher_at, dtype=torch.long)
    return {
        "teacher_input_ids": input_ids,
        "teacher_attention_mask": attention_mask,
        "teacher_positions": positions,
    }
