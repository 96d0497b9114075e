"""The teacher cache of a teacher with its own tokenizer: written in the student's layout
(``teacher_positions``), refused with another teacher tokenizer, read by ``fused_linear_uld``,
and the ``torchkd cache-teacher`` + ``torchkd train`` recipe across tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from torchkd.cli import main
from torchkd.config.errors import ConfigError
from torchkd.lm.cache.format import VALUE_DTYPE

from .pair import TEACHER_VOCAB
from .test_recipe import LLAMA, recipe

K = 8
CACHE_TERM = {"name": "uld", "loss": "fused_linear_uld", "teacher": "cache", "temperature": 2.0}


def _cache_recipe(tmp_path: Path, directory: Path, **cache) -> Path:
    path = recipe(tmp_path, directory, [{"name": "ce", "loss": "ce"}, CACHE_TERM], TEACHER_VOCAB)
    settings = yaml.safe_load(path.read_text())
    settings["data"]["teacher_cache"] = {"dir": str(tmp_path / "teacher_cache"), "k": K, **cache}
    path.write_text(yaml.safe_dump(settings))
    return path


def _teacher() -> torch.nn.Module:
    from torchkd.models import create_model

    torch.manual_seed(0)
    return create_model("hf_causal_lm", config={**LLAMA, "vocab_size": TEACHER_VOCAB}).eval()


@pytest.fixture
def written(tokenizer_pair, tmp_path: Path):
    """``(dataset, teacher, directory)``: the recipe's training split and its top-k cache."""
    from torchkd.config import load_recipe
    from torchkd.config.build import build_datasets
    from torchkd.lm.cache import write_teacher_cache

    data = load_recipe(_cache_recipe(tmp_path, tokenizer_pair[2])).data
    dataset = build_datasets(data.model_copy(update={"teacher_cache": None}), ["train"])["train"]
    teacher = _teacher()
    directory = tmp_path / "written"
    write_teacher_cache(teacher, dataset, directory, k=K, temperature=2.0, rows_per_shard=3)
    return dataset, teacher, directory


def test_the_cache_holds_the_teachers_top_k_at_the_aligned_positions(written) -> None:
    from torchkd.lm.cache import TeacherCacheDataset, read_manifest
    from torchkd.losses import TopKLogits

    dataset, teacher, directory = written
    manifest = read_manifest(directory)
    assert manifest["teacher_tokenizer_fingerprint"] == dataset.teacher_tokenizer_fingerprint
    assert manifest["vocab_size"] == TEACHER_VOCAB
    cached = TeacherCacheDataset(dataset, directory, k=K, temperature=2.0)
    aligned = 0
    for index in range(len(dataset)):
        sample = cached[index]
        inputs = {key: value.unsqueeze(0) for key, value in sample["teacher_inputs"].items()}
        with torch.no_grad():
            logits = teacher(**inputs).logits[0]
        positions = sample["teacher_positions"]
        for t, position in enumerate(positions.tolist()):
            ids, log_probs = sample["teacher_topk_ids"][t], sample["teacher_topk_log_probs"][t]
            tail = sample["teacher_topk_tail"][t]
            if position < 0:  # padding: ids 0..k-1, no mass on them
                assert ids.tolist() == list(range(K)) and float(tail) == 0.0
                continue
            expected = TopKLogits.from_logits(logits[position], K, 2.0)
            assert torch.equal(ids, expected.token_ids)
            torch.testing.assert_close(log_probs, expected.log_probs, atol=2e-2, rtol=1e-2)
            torch.testing.assert_close(tail, expected.tail_log_mass, atol=2e-2, rtol=1e-2)
            aligned += 1
    assert aligned  # (the student's coarser tokens all end a group here: no padding)


def test_rows_without_a_teacher_position_are_padding() -> None:
    from torchkd.lm.cache.layout import student_layout

    stored = {
        "token_ids": torch.tensor([[[5, 6], [7, 8], [9, 4]]], dtype=torch.uint16),
        "log_probs": torch.tensor([[[-1.0, -2.0], [-0.5, -3.0], [-0.1, -4.0]]]).half(),
        "tail": torch.tensor([[-1.5, -2.5, -3.5]]).half(),
    }
    layout = student_layout(stored, torch.tensor([[2, -1, 0, 1]]))
    assert layout["token_ids"].dtype == torch.uint16
    assert layout["token_ids"].long().tolist() == [[[9, 4], [0, 1], [5, 6], [7, 8]]]
    assert layout["tail"].tolist() == [[-3.5, 0.0, -1.5, -2.5]]
    low = torch.finfo(VALUE_DTYPE).min
    assert layout["log_probs"][0, 1].tolist() == [low, low]
    assert layout["log_probs"][0, 0].tolist() == [-0.0999755859375, -4.0]


def test_another_teacher_tokenizer_is_refused(written) -> None:
    from torchkd.lm.cache import TeacherCacheDataset, TeacherCacheError

    dataset, _, directory = written
    with pytest.raises(TeacherCacheError, match=r"data\.kwargs\.teacher_tokenizer"):
        TeacherCacheDataset(dataset, directory, teacher_tokenizer_fingerprint="0" * 64)


def test_a_cache_of_the_students_tokens_is_refused_for_a_teacher_tokenizer(written) -> None:
    from torchkd.lm.cache import TeacherCacheDataset, TeacherCacheError, write_teacher_cache

    dataset, teacher, directory = written
    plain = directory.parent / "plain"

    class StudentTokens:  # the same samples, the teacher reading the student's tokens
        tokenizer_fingerprint = dataset.tokenizer_fingerprint
        fingerprint = dataset.fingerprint
        teacher_tokenizer_fingerprint = None

        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, index):
            return dataset[index]

    from torchkd.models import create_model

    same = create_model("hf_causal_lm", config={**LLAMA, "vocab_size": 1024})
    write_teacher_cache(same, StudentTokens(), plain, k=K, temperature=2.0)
    with pytest.raises(TeacherCacheError, match=r"no data\.kwargs\.teacher_tokenizer"):
        TeacherCacheDataset(dataset, plain)
    with pytest.raises(ValueError, match="'topk' cache only"):
        write_teacher_cache(teacher, dataset, plain.parent / "sampled", kind="sampled", samples=4)


def test_cache_teacher_then_train_across_tokenizers(tokenizer_pair, tmp_path: Path, capsys):
    path = _cache_recipe(tmp_path, tokenizer_pair[2])
    assert main(["cache-teacher", str(path), "--error-batches", "2"]) == 0
    printed = capsys.readouterr().out
    assert "cache vs dense teacher (ULD at T = 2" in printed
    manifest = json.loads((tmp_path / "teacher_cache" / "manifest.json").read_text())
    assert manifest["error"]["divergence"] == "uld" and manifest["vocab_size"] == TEACHER_VOCAB
    run_dir = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run_dir)]) == 0
    final = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert "terms/uld" in final.get("val", {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loss": "fused_linear_kd"}, "must compare vocabularies"),
        ({"cache": {"kind": "sampled", "samples": 4, "k": None}}, "kind: topk only"),
    ],
)
def test_refusals(tokenizer_pair, tmp_path: Path, change: dict, message: str) -> None:
    from torchkd.config import cache_teacher, load_recipe

    path = _cache_recipe(tmp_path, tokenizer_pair[2], **change.get("cache", {}))
    settings = yaml.safe_load(path.read_text())
    settings["terms"][1].update({k: v for k, v in change.items() if k != "cache"})
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match=message):
        cache_teacher(load_recipe(path))


def test_a_teacher_server_is_refused(tokenizer_pair, tmp_path: Path) -> None:
    from torchkd.config import load_recipe
    from torchkd.config.teacher_server import teacher_server_client

    path = _cache_recipe(tmp_path, tokenizer_pair[2])
    settings = yaml.safe_load(path.read_text())
    del settings["data"]["teacher_cache"]
    settings["teacher"] = {"server": "http://127.0.0.1:9"}
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match="a teacher with its own tokenizer is not served"):
        teacher_server_client(load_recipe(path))


def test_uld_from_a_sampled_cache_is_refused(tokenizer_pair, tmp_path: Path) -> None:
    from torchkd.config import load_recipe
    from torchkd.config.teacher_cache import check_cache_terms

    path = _cache_recipe(tmp_path, tokenizer_pair[2], kind="sampled", samples=4, k=None)
    settings = yaml.safe_load(path.read_text())
    del settings["data"]["kwargs"]["teacher_tokenizer"]  # one tokenizer: refused all the same
    path.write_text(yaml.safe_dump(settings))
    with pytest.raises(ConfigError, match="cannot read a sampled teacher cache"):
        check_cache_terms(load_recipe(path))
