"""``torchkd cache-teacher RECIPE`` end to end on a tiny causal LM, and the recipe side of the
cache: ``data.teacher_cache`` in the loaders, the temperature check of training."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchkd.cli import main
from torchkd.config import (
    ConfigError,
    build_datasets,
    build_loaders,
    cache_temperature,
    check_teacher_cache,
    load_recipe,
)
from torchkd.data import train_bpe_tokenizer
from torchkd.data.teacher_cache import (
    TeacherCacheDataset,
    read_manifest,
    teacher_fingerprint,
)

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, K = 300, 8, 8  # VOCAB: the tokenizer's at most
WORDS = [
    "the",
    "cache",
    "keeps",
    "the",
    "teacher",
    "top",
    "k",
    "tokens",
    "of",
    "every",
    "position",
    "in",
    "shards",
    "on",
    "disk",
]


def tiny_llama(hidden_size: int = 16, layers: int = 1) -> Any:
    """A tiny Llama (the recipes' model factory: ``<this module>:tiny_llama``)."""
    config = transformers.AutoConfig.for_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 small text documents and a BPE tokenizer trained on them."""
    root = tmp_path_factory.mktemp("corpus")
    for number in range(16):
        words = [WORDS[(number * 3 + i) % len(WORDS)] for i in range(12 + 3 * number)]
        (root / f"doc{number:02d}.txt").write_text(" ".join(words))
    train_bpe_tokenizer(sorted(root.glob("*.txt")), VOCAB, root / "tokenizer")
    return root


@pytest.fixture
def recipe(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipe on the text dataset whose fused KD term reads the cache at T = 2; the teacher
    has a checkpoint."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(5)
    save_file(tiny_llama(hidden_size=32, layers=2).state_dict(), tmp_path / "teacher.safetensors")
    path = tmp_path / "cache.yaml"
    factory = f"{__name__}:tiny_llama"
    path.write_text(
        "name: cache_demo\n"
        "data:\n"
        "  dataset: text\n"
        f"  kwargs: {{files: ['{corpus}/*.txt'], tokenizer: '{corpus}/tokenizer', seq_len: 8, "
        f"cache: '{tmp_path}/text'}}\n"
        "  batch_size: 4\n"
        "  teacher_cache: {dir: cache, k: 8}\n"
        f"teacher: {{model: '{factory}', kwargs: {{hidden_size: 32, layers: 2}}, "
        "checkpoint: teacher.safetensors}\n"
        f"student: {{model: '{factory}', kwargs: {{hidden_size: 16}}}}\n"
        "terms:\n"
        "  - {name: kd, loss: fused_linear_kd, teacher: cache, temperature: 2.0}\n"
        "train: {seed: 3}\n"
    )
    return path


def train_rows(recipe: Path) -> int:
    return len(
        build_datasets(
            load_recipe(recipe).data.model_copy(update={"teacher_cache": None}), ["train"]
        )["train"]
    )


def number(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d,.]+)", text)
    assert match, f"{label!r} not in the output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_cache_teacher_writes_the_cache_and_reports_size_and_error(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["cache-teacher", str(recipe), "--rows-per-shard", "5", "--error-batches", "2"]) == 0
    )
    out = capsys.readouterr().out
    directory, rows = tmp_path / "cache", train_rows(recipe)
    manifest = read_manifest(directory)
    assert manifest["complete"] and len(manifest["shards"]) == -(-rows // 5) > 1
    assert manifest["rows"] == rows and manifest["tokenizer_fingerprint"] is not None
    assert manifest["k"] == K and manifest["temperature"] == 2.0
    teacher = tiny_llama(hidden_size=32, layers=2)
    teacher.load_state_dict(load_file("teacher.safetensors"))
    assert manifest["teacher_fingerprint"] == teacher_fingerprint(teacher)  # the checkpoint's
    on_disk = sum(path.stat().st_size for path in directory.iterdir())
    assert number(out, "tokens cached") == rows * LENGTH
    assert number(out, "bytes on disk") == manifest["bytes_on_disk"] < on_disk  # error added
    assert f"{K * (2 + 2) + 2} stored" in out
    error = manifest["error"]
    assert error["batches"] == 2 and error["temperature"] == 2.0
    assert number(out, "loss relative error") == pytest.approx(error["loss_relative_error"], 1e-3)
    assert number(out, "gradient relative error") == pytest.approx(
        error["grad_relative_error"], 1e-3
    )
    assert 0 < error["grad_relative_error"] < 1
    # run again: nothing is rewritten
    shards = {path.name: path.read_bytes() for path in directory.glob("shard-*")}
    assert (
        main(["cache-teacher", str(recipe), "--rows-per-shard", "5", "--error-batches", "0"]) == 0
    )
    shard_count = len(manifest["shards"])
    assert f"{shard_count} of {shard_count} shards already written" in capsys.readouterr().out
    assert shards == {path.name: path.read_bytes() for path in directory.glob("shard-*")}


def test_an_interrupted_cache_teacher_resumes(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchkd.data import teacher_cache

    argv = ["cache-teacher", str(recipe), "--rows-per-shard", "5", "--error-batches", "0"]
    assert main([*argv, "--dir", "reference"]) == 0
    shard_tensors = teacher_cache._shard_tensors
    calls = []

    def interrupt_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return shard_tensors(*args, **kwargs)

    monkeypatch.setattr(teacher_cache, "_shard_tensors", interrupt_second)
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert len(read_manifest(tmp_path / "cache")["shards"]) == 1
    assert main(argv) == 0
    assert "1 of " in capsys.readouterr().out
    for shard in (tmp_path / "reference").glob("shard-*"):
        assert (tmp_path / "cache" / shard.name).read_bytes() == shard.read_bytes()


def test_the_training_split_is_read_with_the_cache(recipe: Path, tmp_path: Path) -> None:
    assert main(["cache-teacher", str(recipe), "--error-batches", "0"]) == 0
    loaders = build_loaders(load_recipe(recipe).data, splits=["train", "val"])
    assert isinstance(loaders.train.dataset.dataset, TeacherCacheDataset)
    batch = next(iter(loaders.train))
    assert batch["teacher_topk_ids"].shape == (4, LENGTH, K)
    assert batch["teacher_topk_log_probs"].dtype == torch.float32
    assert batch["teacher_topk_tail"].shape == (4, LENGTH)
    assert "teacher_topk_ids" not in next(iter(loaders.val))
    check_teacher_cache(load_recipe(recipe))  # the same temperature: accepted


def test_training_refuses_a_cache_of_another_temperature(recipe: Path) -> None:
    assert main(["cache-teacher", str(recipe), "--error-batches", "0"]) == 0
    with pytest.raises(ConfigError) as caught:
        check_teacher_cache(load_recipe(recipe, ["terms.0.temperature=4.0"]))
    message = str(caught.value)
    assert "terms.0.temperature: the term reads the teacher cache at temperature 4.0" in message
    assert "written at temperature 2.0" in message and "data.teacher_cache.dir" in message
    moved = ["terms.0.temperature=null", "terms.0.loss_kwargs={temperature: 3.0}"]
    with pytest.raises(ConfigError, match=r"terms\.0\.loss_kwargs\.temperature: .* 3\.0"):
        check_teacher_cache(load_recipe(recipe, moved))
    with pytest.raises(ConfigError, match=r"terms\.0\.teacher: 'cache' .* data\.teacher_cache"):
        check_teacher_cache(load_recipe(recipe, ["data.teacher_cache=null"]))
    with pytest.raises(ConfigError, match="no teacher cache in"):
        check_teacher_cache(load_recipe(recipe, ["data.teacher_cache.dir=elsewhere"]))


def test_cache_temperature_needs_one_cache_reading_temperature(recipe: Path) -> None:
    assert cache_temperature(load_recipe(recipe)) == 2.0
    with pytest.raises(ConfigError, match="no term reads the teacher cache"):
        cache_temperature(load_recipe(recipe, ["terms.0.teacher=logits"]))
    two = [
        "terms=[{name: kd, loss: fused_linear_kd, teacher: cache, temperature: 2.0}, "
        "{name: kd2, loss: fused_linear_kd, teacher: cache}]"
    ]
    with pytest.raises(
        ConfigError, match=r"terms\.0\.temperature = 2\.0, terms\.1\.temperature = 1"
    ):
        cache_temperature(load_recipe(recipe, two))


def test_cache_teacher_usage_errors(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cache-teacher", str(recipe), "data.teacher_cache=null"]) == 2
    assert "give --dir DIR, or set data.teacher_cache.dir" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x")
    assert main(["cache-teacher", str(recipe), "--dir", "full"]) == 1
    assert "not empty and holds no teacher cache" in capsys.readouterr().err
