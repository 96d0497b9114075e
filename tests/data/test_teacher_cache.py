"""The offline sparse teacher cache: what is stored equals the top-k of the dense teacher, the
format's size, resuming, and the checks on read (digests, fingerprints, settings)."""

from __future__ import annotations

import copy
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from tolerances import FLOAT64_EPS, float32_tolerance
from torch import Tensor

from torchkd.lm import next_token_labels
from torchkd.lm.cache import (
    MANIFEST,
    TeacherCacheDataset,
    TeacherCacheError,
    bytes_per_token,
    fingerprint_dataset,
    read_manifest,
    shard_name,
    source_fingerprint,
    teacher_fingerprint,
    write_manifest,
    write_teacher_cache,
)
from torchkd.lm.cache.error import measure_cache_error
from torchkd.losses import TopKLogits

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, ROWS = 64, 6, 7
SETTINGS: dict[str, Any] = {
    "k": 5,
    "temperature": 2.0,
    "batch_size": 2,
    "rows_per_shard": 3,
    "chunk_size": 5,  # chunks straddle the rows of a batch
}


def tiny_llama(vocab_size: int = VOCAB, hidden_size: int = 16, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


class TokenSamples:
    """Spec-format causal-LM samples in memory; the last row ends in two padding positions."""

    def __init__(self, rows: int = ROWS, vocab_size: int = VOCAB, seed: int = 1) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (rows, LENGTH), generator=generator)
        self.attention_mask = torch.ones_like(self.input_ids)
        self.attention_mask[-1, -2:] = 0
        self.labels = next_token_labels(self.input_ids, self.attention_mask)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, position: Any) -> dict[str, Any]:
        index = torch.as_tensor(position)
        inputs = {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}
        return {"inputs": inputs, "labels": self.labels[index], "index": index}


@pytest.fixture(scope="module")
def teacher() -> Any:
    return tiny_llama()


@pytest.fixture(scope="module")
def data() -> TokenSamples:
    return TokenSamples()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, teacher: Any, data: TokenSamples) -> Path:
    directory = tmp_path_factory.mktemp("cache") / "teacher"
    write_teacher_cache(teacher, data, directory, **SETTINGS)
    return directory


def dense_reference(teacher: Any, data: TokenSamples, k: int, temperature: float) -> TopKLogits:
    """Top-k of the full model call's logits (the HF forward, not the cache's body + head
    path), in float64."""
    with torch.no_grad():
        logits = teacher(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    return TopKLogits.from_logits(logits.double(), k, temperature)


def test_round_trip_equals_the_top_k_of_the_dense_logits(
    written: Path, teacher: Any, data: TokenSamples
) -> None:
    reference = dense_reference(teacher, data, SETTINGS["k"], SETTINGS["temperature"])
    cached = TeacherCacheDataset(data, written, k=5, temperature=2.0)
    assert len(cached) == ROWS
    for position in range(ROWS):
        sample = cached[position]
        assert torch.equal(sample["labels"], data.labels[position])  # the base sample is kept
        assert sample["teacher_topk_ids"].dtype == torch.int64
        assert sample["teacher_topk_log_probs"].dtype == torch.float32
        assert torch.equal(sample["teacher_topk_ids"], reference.token_ids[position])
        # float16 storage: half an ulp, 2^-11 relative; the other 2^-11 (≈ 4e3 ε₃₂) is for the
        # float32 paths, cache batches of 2 vs the full forward (its own rounding ≲ 1e-5)
        torch.testing.assert_close(
            sample["teacher_topk_log_probs"].double(),
            reference.log_probs[position],
            rtol=2**-10,
            atol=1e-6,
        )
        torch.testing.assert_close(
            sample["teacher_topk_tail"].double(),
            reference.tail_log_mass[position],
            rtol=2**-10,
            atol=1e-6,
        )
    batch = cached[[4, 1]]
    assert batch["teacher_topk_ids"].shape == (2, LENGTH, 5)
    assert batch["teacher_topk_tail"].shape == (2, LENGTH)
    assert torch.equal(batch["teacher_topk_ids"][0], cached[4]["teacher_topk_ids"])
    assert torch.equal(batch["teacher_topk_log_probs"][1], cached[1]["teacher_topk_log_probs"])


@pytest.mark.parametrize(("vocab_size", "id_dtype"), [(VOCAB, "uint16"), (70_000, "int32")])
def test_storage_is_the_bytes_per_token_formula(
    tmp_path: Path, vocab_size: int, id_dtype: str
) -> None:
    model, data = tiny_llama(vocab_size, hidden_size=8), TokenSamples(5, vocab_size)
    manifest = write_teacher_cache(model, data, tmp_path, k=3, rows_per_shard=2, batch_size=5)
    assert manifest["token_id_dtype"] == id_dtype and manifest["complete"]
    per_token = 3 * ((2 if id_dtype == "uint16" else 4) + 2) + 2
    assert bytes_per_token(3, vocab_size) == per_token
    for entry in manifest["shards"]:
        path = tmp_path / entry["file"]
        raw = path.read_bytes()
        (header_size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_size])
        assert header["token_ids"]["dtype"] == ("U16" if id_dtype == "uint16" else "I32")
        assert header["log_probs"]["dtype"] == header["tail"]["dtype"] == "F16"
        rows = entry["rows"]
        payload = 8 * rows + per_token * rows * LENGTH  # index + the formula per position
        assert path.stat().st_size == 8 + header_size + payload
    reference = dense_reference(model, data, 3, 1.0)
    read = TeacherCacheDataset(data, tmp_path)[list(range(5))]
    assert torch.equal(read["teacher_topk_ids"], reference.token_ids)


class Interrupting:
    """``dataset`` that raises KeyboardInterrupt when ``position`` is read (once)."""

    def __init__(self, dataset: TokenSamples, position: int) -> None:
        self.dataset, self.position = dataset, position

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict[str, Any]:
        if position == self.position:
            self.position = -1
            raise KeyboardInterrupt
        return self.dataset[position]


def test_an_interrupted_run_resumes_to_byte_identical_shards(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples
) -> None:
    directory = tmp_path / "resumed"
    fingerprint = fingerprint_dataset(data)

    def stop_after_first(shard: int, num_shards: int) -> None:
        if shard == 0:
            raise RuntimeError("stopped after one shard")

    with pytest.raises(RuntimeError, match="after one shard"):
        write_teacher_cache(teacher, data, directory, on_shard=stop_after_first, **SETTINGS)
    assert len(read_manifest(directory)["shards"]) == 1
    with pytest.raises(TeacherCacheError, match=r"incomplete .*1 shards written.*cache-teacher"):
        TeacherCacheDataset(data, directory)
    # interrupted in the middle of shard 1 (row 4): nothing of it is kept, no temp file left
    interrupting = Interrupting(data, 4)
    with pytest.raises(KeyboardInterrupt):
        write_teacher_cache(
            teacher, interrupting, directory, dataset_fingerprint=fingerprint, **SETTINGS
        )
    assert sorted(path.name for path in directory.iterdir()) == [MANIFEST, shard_name(0)]
    manifest = write_teacher_cache(
        teacher, interrupting, directory, dataset_fingerprint=fingerprint, **SETTINGS
    )
    assert manifest == read_manifest(written)
    files = sorted(path.name for path in written.iterdir())
    assert files == sorted(path.name for path in directory.iterdir())
    for name in files:
        assert (directory / name).read_bytes() == (written / name).read_bytes(), name


@pytest.mark.parametrize(
    ("change", "named"), [({"temperature": 1.0}, "temperature"), ({"k": 4}, "k")]
)
def test_other_settings_do_not_resume(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples, change: dict, named: str
) -> None:
    with pytest.raises(TeacherCacheError, match=rf"{named}: .* in the cache.*delete the directory"):
        write_teacher_cache(teacher, data, written, **{**SETTINGS, **change})
    (tmp_path / "notes.txt").write_text("not a cache")
    with pytest.raises(TeacherCacheError, match="not empty and holds no teacher cache"):
        write_teacher_cache(teacher, data, tmp_path, **SETTINGS)


def test_a_complete_cache_is_left_as_it_is(written: Path, teacher: Any, data: TokenSamples) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in written.iterdir()}
    write_teacher_cache(teacher, data, written, **SETTINGS)
    assert before == {path.name: path.stat().st_mtime_ns for path in written.iterdir()}


def flip_byte(path: Path, offset: int = -3) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_damaged_last_shard_is_refused_before_any_row_is_read(
    tmp_path: Path, teacher: Any, data: TokenSamples
) -> None:
    write_teacher_cache(teacher, data, tmp_path, **SETTINGS)
    last = tmp_path / shard_name(2)  # rows 6..6: read last in index order
    flip_byte(last)
    with pytest.raises(TeacherCacheError, match=r"shard-00002\.safetensors is damaged: its SHA"):
        TeacherCacheDataset(data, tmp_path)
    # writing again over the complete cache verifies it too, and keeps the damaged file
    with pytest.raises(TeacherCacheError, match=r"shard-00002\.safetensors is damaged"):
        write_teacher_cache(teacher, data, tmp_path, **SETTINGS)
    last.unlink()
    with pytest.raises(TeacherCacheError, match=r"shard-00002\.safetensors is missing"):
        TeacherCacheDataset(data, tmp_path)


def test_an_edited_or_damaged_manifest_is_refused(written: Path, tmp_path: Path) -> None:
    for name in (MANIFEST, shard_name(0), shard_name(1), shard_name(2)):
        (tmp_path / name).write_bytes((written / name).read_bytes())
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "temperature": 4.0}))
    with pytest.raises(TeacherCacheError, match=r"manifest\.json was edited or is damaged"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"format": "torchkd-teacher-ca')
    with pytest.raises(TeacherCacheError, match=r"manifest\.json is damaged \(not JSON"):
        read_manifest(tmp_path)


def test_a_dropped_manifest_entry_is_refused(
    written: Path, tmp_path: Path, data: TokenSamples
) -> None:
    for name in (shard_name(0), shard_name(1), shard_name(2)):
        (tmp_path / name).write_bytes((written / name).read_bytes())
    manifest = read_manifest(written)
    dropped = {**manifest, "shards": manifest["shards"][:2]}
    (tmp_path / MANIFEST).write_text(json.dumps(dropped))  # its digest is the old one
    with pytest.raises(TeacherCacheError, match="was edited or is damaged"):
        TeacherCacheDataset(data, tmp_path)
    write_manifest(tmp_path, dropped)  # a consistent manifest with a shard missing
    with pytest.raises(TeacherCacheError, match=r"lists 2 shards, but its 7 rows of 3 .* take 3"):
        TeacherCacheDataset(data, tmp_path)
    swapped = {**manifest, "shards": [manifest["shards"][1], *manifest["shards"][1:]]}
    write_manifest(tmp_path, swapped)
    with pytest.raises(TeacherCacheError, match=r"shard entry 0 is .*shard-00001"):
        TeacherCacheDataset(data, tmp_path)


def test_the_temporary_of_a_killed_manifest_write_does_not_block_a_rerun(
    tmp_path: Path, written: Path, teacher: Any, data: TokenSamples
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    killed = directory / f".{MANIFEST}.k2x_9abc.tmp"  # what atomic_write's mkstemp names it
    killed.write_text('{"format": ')
    manifest = write_teacher_cache(teacher, data, directory, **SETTINGS)
    assert manifest == read_manifest(written) and not killed.exists()


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5])
def test_a_bad_chunk_size_is_refused(
    tmp_path: Path, teacher: Any, data: TokenSamples, chunk_size: Any
) -> None:
    with pytest.raises(
        ValueError, match=rf"chunk_size must be a positive integer, got {chunk_size}"
    ):
        write_teacher_cache(teacher, data, tmp_path, **{**SETTINGS, "chunk_size": chunk_size})
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_reader_refuses_a_cache_of_other_data_or_settings(
    tmp_path: Path, written: Path, data: TokenSamples
) -> None:
    other = TokenSamples()
    other.input_ids[2, 3] = (other.input_ids[2, 3] + 1) % VOCAB
    with pytest.raises(TeacherCacheError, match="written for other data"):
        TeacherCacheDataset(other, written)
    with pytest.raises(TeacherCacheError, match=r"written with temperature=2.0, but temperature=1"):
        TeacherCacheDataset(data, written, temperature=1.0)
    with pytest.raises(TeacherCacheError, match="written with k=5, but k=16"):
        TeacherCacheDataset(data, written, k=16)
    with pytest.raises(TeacherCacheError, match=r"no teacher cache in .*cache-teacher"):
        TeacherCacheDataset(data, tmp_path)


def test_the_tokenizer_fingerprint_is_checked(
    tmp_path: Path, teacher: Any, data: TokenSamples
) -> None:
    write_teacher_cache(teacher, data, tmp_path, tokenizer_fingerprint="a" * 64, **SETTINGS)
    TeacherCacheDataset(data, tmp_path, tokenizer_fingerprint="a" * 64)
    with pytest.raises(TeacherCacheError, match="another tokenizer"):
        TeacherCacheDataset(data, tmp_path, tokenizer_fingerprint="b" * 64)


def test_the_teacher_fingerprint_follows_weights_and_config() -> None:
    first = teacher_fingerprint(tiny_llama(seed=0))
    assert teacher_fingerprint(tiny_llama(seed=0)) == first
    assert teacher_fingerprint(tiny_llama(seed=1)) != first
    changed = tiny_llama(seed=0)
    changed.config.rms_norm_eps = 1e-3  # same weights, other computation
    assert teacher_fingerprint(changed) != first


# float64 results that differ in order only: ≤ 10⁶ ε₆₄ allows a condition number times rounding
# count of 10⁶ (a tiny Llama's forward and a KL over 64 classes and 33 tokens)
RELATIVE_64 = float32_tolerance(1e6, 1.0, FLOAT64_EPS)


def kl_sum(teacher_log: Tensor, student: Any, data: TokenSamples, temperature: float) -> float:
    """T^2 * sum over the valid tokens of KL(q || p) for the teacher's ``[N, L, V]``
    log-probabilities ``teacher_log`` and the student's full logits, in float64."""
    with torch.no_grad():
        inputs = {"input_ids": data.input_ids, "attention_mask": data.attention_mask}
        student_log = torch.log_softmax(student(**inputs).logits.double() / temperature, -1)
    terms = teacher_log.exp() * (teacher_log - student_log)
    kl = torch.where(teacher_log > -torch.inf, terms, 0.0).sum(-1)
    return float(temperature**2 * kl[data.labels != -100].sum())


def test_cache_error_compares_the_dense_teacher_with_what_was_stored(
    tmp_path: Path, teacher: Any, data: TokenSamples
) -> None:
    # float64 models: both sides differ in forward batch shapes and summation order only,
    # whose rounding RELATIVE_64 bounds
    teacher = copy.deepcopy(teacher).double()
    student = tiny_llama(hidden_size=8, seed=3).double()
    errors = {}
    for k in (VOCAB, 4):
        write_teacher_cache(teacher, data, tmp_path / str(k), k=k, temperature=2.0)
        cached = TeacherCacheDataset(data, tmp_path / str(k))
        errors[k] = measure_cache_error(
            teacher, student, cached, temperature=2.0, batches=2, batch_size=4
        )
    full, small = errors[VOCAB], errors[4]
    tokens = int((data.labels != -100).sum())
    assert full["batches"] == 2 and full["tokens"] == tokens
    with torch.no_grad():
        logits = teacher(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    dense = kl_sum(torch.log_softmax(logits.double() / 2.0, -1), student, data, 2.0)
    assert full["loss_dense"] == pytest.approx(dense / tokens, rel=RELATIVE_64)
    # k = V: the cache is the whole distribution, up to the float16 rounding of what is stored
    read = TeacherCacheDataset(data, tmp_path / str(VOCAB))[list(range(ROWS))]
    stored = torch.full((ROWS, LENGTH, VOCAB), -torch.inf, dtype=torch.float64)
    stored.scatter_(-1, read["teacher_topk_ids"], read["teacher_topk_log_probs"].double())
    assert full["loss_cache"] == pytest.approx(
        kl_sum(stored, student, data, 2.0) / tokens, rel=RELATIVE_64
    )
    assert full["loss_relative_error"] < 0.03 and full["grad_relative_error"] < 0.03
    assert full["grad_cosine"] > 0.999
    assert small["loss_relative_error"] > 10 * full["loss_relative_error"]
    assert small["grad_relative_error"] > 10 * full["grad_relative_error"]


def test_the_reader_pickles_for_loader_workers(written: Path, data: TokenSamples) -> None:
    cached = TeacherCacheDataset(data, written)
    first = cached[5]["teacher_topk_log_probs"]  # opens shard 1
    copy = pickle.loads(pickle.dumps(cached))
    assert torch.equal(copy[5]["teacher_topk_log_probs"], first)
    assert copy.k == 5 and copy.temperature == 2.0


def test_the_source_fingerprint_follows_weight_bytes_not_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
        (tmp_path / place / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "w.pt").write_bytes(b"state")
    first = source_fingerprint("hf_causal_lm", {"path": "a"}, "w.pt")
    assert source_fingerprint("hf_causal_lm", {"path": "b"}, "w.pt") == first  # moved copy
    assert source_fingerprint("hf_causal_lm", {"path": "a"}, None) != first
    assert source_fingerprint("hf_encoder", {"path": "a"}, "w.pt") != first
    (tmp_path / "b" / "model.safetensors").write_bytes(b"weightz")
    assert source_fingerprint("hf_causal_lm", {"path": "b"}, "w.pt") != first
    (tmp_path / "w.pt").write_bytes(b"statf")
    assert source_fingerprint("hf_causal_lm", {"path": "a"}, "w.pt") != first
