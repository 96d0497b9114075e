"""The sampled teacher cache (kind="sampled"): what is stored equals the draws of the dense
teacher's distribution from each row's seed, the format's size, resuming to identical shards,
and the checks on read (digests, kind, samples)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from torchkd.calls.hidden import cached_teacher
from torchkd.lm.cache import (
    MANIFEST,
    SAMPLED_KEYS,
    TeacherCacheDataset,
    TeacherCacheError,
    read_manifest,
    row_seed,
    sampled_bytes_per_token,
    shard_name,
    write_teacher_cache,
)
from torchkd.lm.cache.error import measure_cache_error
from torchkd.losses import SampledLogits

from .test_teacher_cache import LENGTH, ROWS, VOCAB, TokenSamples, flip_byte, tiny_llama

SAMPLED: dict[str, Any] = {
    "kind": "sampled",
    "samples": 6,
    "seed": 3,
    "temperature": 2.0,
    "batch_size": 2,
    "rows_per_shard": 3,
    "chunk_size": 5,  # chunks straddle the rows of a batch
}


@pytest.fixture(scope="module")
def teacher() -> Any:
    return tiny_llama()


@pytest.fixture(scope="module")
def data() -> TokenSamples:
    return TokenSamples()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, teacher: Any, data: TokenSamples) -> Path:
    directory = tmp_path_factory.mktemp("sampled") / "teacher"
    write_teacher_cache(teacher, data, directory, **SAMPLED)
    return directory


def test_round_trip_equals_the_seeded_draws_of_the_dense_logits(
    written: Path, teacher: Any, data: TokenSamples
) -> None:
    with torch.no_grad():
        logits = teacher(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    cached = TeacherCacheDataset(data, written, kind="sampled", samples=6, temperature=2.0)
    assert cached.kind == "sampled" and cached.samples == 6 and cached.k is None
    for position in range(ROWS):
        sample = cached[position]
        assert "teacher_topk_ids" not in sample
        ids, counts, entropy = (sample[key] for key in SAMPLED_KEYS)
        assert ids.dtype == counts.dtype == torch.int64 and entropy.dtype == torch.float32
        assert counts.sum(-1).tolist() == [6] * LENGTH
        uniforms = torch.rand(
            (LENGTH, 6),
            generator=torch.Generator().manual_seed(row_seed(3, position)),
            dtype=torch.float64,
        )
        # the float32 forward in batches of 2 vs the full forward: a draw changes only when a
        # uniform lies within ~1e-6 of a cumulative probability (none does here)
        reference = SampledLogits.from_logits(logits[position], 6, 2.0, uniforms=uniforms)
        assert torch.equal(ids, reference.token_ids)
        assert torch.equal(counts, reference.counts)
        torch.testing.assert_close(entropy, reference.entropy, rtol=0, atol=1e-5)
    batch = cached[[4, 1]]
    assert batch["teacher_sample_ids"].shape == (2, LENGTH, 6)
    assert batch["teacher_entropy"].shape == (2, LENGTH)
    assert torch.equal(batch["teacher_sample_counts"][1], cached[1]["teacher_sample_counts"])
    targets = cached_teacher(batch, term=None)  # type: ignore[arg-type]
    assert isinstance(targets, SampledLogits)
    assert torch.equal(targets.token_ids, batch["teacher_sample_ids"])


def test_a_sampled_cache_with_an_exact_head(
    tmp_path: Path, teacher: Any, data: TokenSamples
) -> None:
    """kind="sampled" with k: the top-k kept exactly (float32), the draws from the rest; the
    reader gives both, and the loss's teacher is a SampledLogits with that head."""
    manifest = write_teacher_cache(teacher, data, tmp_path, **{**SAMPLED, "k": 3})
    assert manifest["k"] == 3 and manifest["samples"] == 6
    with torch.no_grad():
        logits = teacher(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    cached = TeacherCacheDataset(data, tmp_path, kind="sampled", k=3, samples=6)
    batch = cached[list(range(ROWS))]
    targets = cached_teacher(batch, term=None)  # type: ignore[arg-type]
    assert isinstance(targets, SampledLogits) and targets.head is not None
    for position in range(ROWS):
        uniforms = torch.rand(
            (LENGTH, 6),
            generator=torch.Generator().manual_seed(row_seed(3, position)),
            dtype=torch.float64,
        )
        reference = SampledLogits.from_logits(logits[position], 6, 2.0, uniforms=uniforms, k=3)
        assert torch.equal(targets.token_ids[position], reference.token_ids)
        assert torch.equal(targets.counts[position], reference.counts)
        assert torch.equal(targets.head.token_ids[position], reference.head.token_ids)
        # float32 storage of the head, as the entropy (the float32 forward in batches of 2)
        torch.testing.assert_close(
            targets.head.log_probs[position], reference.head.log_probs, rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            targets.head.tail_log_mass[position],
            reference.head.tail_log_mass,
            rtol=0,
            atol=1e-5,
        )
    per_token = sampled_bytes_per_token(6, VOCAB, k=3)
    assert per_token == 6 * 3 + 4 + 3 * (2 + 4) + 4
    for entry in manifest["shards"]:
        path = tmp_path / entry["file"]
        (header_size,) = struct.unpack("<Q", path.read_bytes()[:8])
        rows = entry["rows"]
        assert path.stat().st_size == 8 + header_size + 8 * rows + per_token * rows * LENGTH
    with pytest.raises(TeacherCacheError, match="written with k=3, but k=4"):
        TeacherCacheDataset(data, tmp_path, k=4)


@pytest.mark.parametrize(("samples", "count_dtype", "count_bytes"), [(6, "U8", 1), (300, "U16", 2)])
def test_storage_is_the_bytes_per_token_formula(
    tmp_path: Path, samples: int, count_dtype: str, count_bytes: int
) -> None:
    model, data = tiny_llama(hidden_size=8), TokenSamples(5)
    manifest = write_teacher_cache(
        model, data, tmp_path, kind="sampled", samples=samples, rows_per_shard=2, batch_size=5
    )
    assert manifest["kind"] == "sampled" and manifest["samples"] == samples
    assert manifest["k"] is None and manifest["seed"] == 0
    per_token = samples * (2 + count_bytes) + 4
    assert sampled_bytes_per_token(samples, VOCAB) == per_token
    for entry in manifest["shards"]:
        path = tmp_path / entry["file"]
        raw = path.read_bytes()
        (header_size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_size])
        assert header["token_ids"]["dtype"] == "U16"
        assert header["counts"]["dtype"] == count_dtype
        assert header["entropy"]["dtype"] == "F32"
        rows = entry["rows"]
        assert path.stat().st_size == 8 + header_size + 8 * rows + per_token * rows * LENGTH


def test_the_draws_do_not_depend_on_batch_or_chunk_size(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples
) -> None:
    other = {**SAMPLED, "batch_size": 3, "chunk_size": 64}
    write_teacher_cache(teacher, data, tmp_path, **other)
    first = TeacherCacheDataset(data, written)[list(range(ROWS))]
    second = TeacherCacheDataset(data, tmp_path)[list(range(ROWS))]
    for key in SAMPLED_KEYS[:2]:
        assert torch.equal(first[key], second[key])


def test_an_interrupted_run_resumes_to_byte_identical_shards(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples
) -> None:
    def stop_after_first(shard: int, num_shards: int) -> None:
        if shard == 0:
            raise RuntimeError("stopped after one shard")

    with pytest.raises(RuntimeError, match="after one shard"):
        write_teacher_cache(teacher, data, tmp_path, on_shard=stop_after_first, **SAMPLED)
    assert len(read_manifest(tmp_path)["shards"]) == 1
    manifest = write_teacher_cache(teacher, data, tmp_path, **SAMPLED)
    assert manifest == read_manifest(written)
    for name in (MANIFEST, shard_name(0), shard_name(1), shard_name(2)):
        assert (tmp_path / name).read_bytes() == (written / name).read_bytes(), name


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"samples": 5}, "samples"),
        ({"seed": 4}, "seed"),
        ({"kind": "topk", "samples": None}, "kind"),
    ],
)
def test_other_settings_do_not_resume(
    written: Path, teacher: Any, data: TokenSamples, change: dict, named: str
) -> None:
    settings = {**SAMPLED, **change}
    if settings["kind"] == "topk":
        settings = {**settings, "k": 6, "seed": 0}
    settings = {key: value for key, value in settings.items() if value is not None}
    with pytest.raises(TeacherCacheError, match=rf"{named}: .* in the cache.*delete the directory"):
        write_teacher_cache(teacher, data, written, **settings)


def test_a_damaged_shard_is_refused(tmp_path: Path, teacher: Any, data: TokenSamples) -> None:
    write_teacher_cache(teacher, data, tmp_path, **SAMPLED)
    flip_byte(tmp_path / shard_name(1))
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.safetensors is damaged: its SHA"):
        TeacherCacheDataset(data, tmp_path)


def test_the_kind_and_the_samples_are_checked_on_read(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples
) -> None:
    with pytest.raises(TeacherCacheError, match="is a 'sampled' cache, but a 'topk' one"):
        TeacherCacheDataset(data, written, kind="topk")
    with pytest.raises(TeacherCacheError, match="written with samples=6, but samples=12"):
        TeacherCacheDataset(data, written, samples=12)
    write_teacher_cache(teacher, data, tmp_path, k=4, rows_per_shard=7)
    with pytest.raises(TeacherCacheError, match="is a 'topk' cache, but a 'sampled' one"):
        TeacherCacheDataset(data, tmp_path, kind="sampled")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"kind": "sampled"}, "a 'sampled' teacher cache needs samples"),
        ({"kind": "sampled", "samples": 4, "k": VOCAB}, "must be below the teacher's vocab"),
        ({"k": 4, "samples": 4}, "samples is for a 'sampled' cache, not 'topk'"),
        ({"kind": "sampled", "samples": 70_000}, "samples must be at most 65535"),
        ({"kind": "sampled", "samples": 0}, "samples must be a positive integer"),
        ({"kind": "sampled", "samples": 4, "seed": -1}, "seed must be a non-negative"),
        ({"kind": "dense", "k": 4}, r"kind must be one of \('topk', 'sampled'\)"),
    ],
)
def test_bad_settings_are_refused(
    tmp_path: Path, teacher: Any, data: TokenSamples, settings: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_teacher_cache(teacher, data, tmp_path, **settings)
    assert not any(tmp_path.iterdir())  # nothing written


def test_cache_error_of_a_sampled_cache(written: Path, teacher: Any, data: TokenSamples) -> None:
    student = tiny_llama(hidden_size=8, seed=5)
    cached = TeacherCacheDataset(data, written)
    error = measure_cache_error(teacher, student, cached, temperature=2.0, batches=2, batch_size=3)
    assert error["tokens"] > 0 and error["grad_relative_error"] > 0
    assert -1 <= error["grad_cosine"] <= 1
