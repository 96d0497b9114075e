"""A teacher cache of a cross-modal recipe (``data.teacher_inputs``): written from the
teacher's own entry of each sample, and keyed by it (the dataset fingerprint includes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from torchkd.lm.cache import (
    TeacherCacheDataset,
    TeacherCacheError,
    fingerprint_dataset,
    write_teacher_cache,
)
from torchkd.losses import TopKLogits

from .test_teacher_cache import SETTINGS, VOCAB, TokenSamples, tiny_llama


class TwoViews(TokenSamples):
    """Each sample with the student's tokens (``inputs``) and other tokens of the same length
    for the teacher (``teacher_inputs``)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.teacher_ids = torch.randint(0, VOCAB, self.input_ids.shape, generator=generator)

    def __getitem__(self, position: Any) -> dict[str, Any]:
        sample = super().__getitem__(position)
        index = sample["index"]
        mask = self.attention_mask[index]
        sample["teacher_inputs"] = {"input_ids": self.teacher_ids[index], "attention_mask": mask}
        return sample


def test_the_cache_holds_the_teacher_on_its_own_inputs(tmp_path: Path) -> None:
    teacher, data = tiny_llama(), TwoViews()
    directory = tmp_path / "cache"
    write_teacher_cache(teacher, data, directory, inputs_key="teacher_inputs", **SETTINGS)
    with torch.no_grad():
        logits = teacher(input_ids=data.teacher_ids, attention_mask=data.attention_mask).logits
    reference = TopKLogits.from_logits(logits.double(), SETTINGS["k"], SETTINGS["temperature"])
    cached = TeacherCacheDataset(data, directory, inputs_key="teacher_inputs")
    for position in range(len(data)):
        assert torch.equal(cached[position]["teacher_topk_ids"], reference.token_ids[position])
    with pytest.raises(TeacherCacheError, match="written for other data"):
        TeacherCacheDataset(data, directory)  # the student's entry: another cache


def test_the_fingerprint_includes_the_key() -> None:
    data = TwoViews()
    plain = fingerprint_dataset(data)
    assert fingerprint_dataset(data, "inputs") == plain  # caches written before stay valid
    assert fingerprint_dataset(data, "teacher_inputs") != plain
