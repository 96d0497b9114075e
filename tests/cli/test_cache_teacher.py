"""``torchkd cache-teacher RECIPE`` end to end on tiny Llamas and the text dataset, and the
recipe side of the cache: ``data.teacher_cache`` in the loaders, training from it, the
temperature check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

from torchkd.cli import main
from torchkd.config import (
    ConfigError,
    ModelConfig,
    build_datasets,
    build_distiller,
    build_loaders,
    build_model,
    cache_temperature,
    check_teacher_cache,
    load_recipe,
)
from torchkd.data import train_bpe_tokenizer
from torchkd.lm.cache import TeacherCacheDataset, read_manifest, teacher_fingerprint

pytest.importorskip("transformers")

VOCAB, LENGTH, K = 300, 8, 8  # VOCAB: the tokenizer's at most
WORDS = [
    "the",
    "cache",
    "keeps",
    "the",
    "top",
    "k",
    "tokens",
    "of",
    "the",
    "teacher",
    "for",
    "every",
    "position",
    "in",
    "shards",
]
LLAMA = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
}
TEACHER = ModelConfig(
    model="hf_causal_lm",
    kwargs={"config": {**LLAMA, "hidden_size": 32, "num_hidden_layers": 2}},
    checkpoint="teacher.safetensors",
)
FAST = ["train.epochs=1", "train.progress=false"]


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
    teacher = build_model(TEACHER.model_copy(update={"checkpoint": None}), "teacher")
    save_file(teacher.state_dict(), tmp_path / "teacher.safetensors")
    settings = {
        "name": "cache_demo",
        "data": {
            "dataset": "text",
            "kwargs": {
                "files": [f"{corpus}/*.txt"],
                "tokenizer": str(corpus / "tokenizer"),
                "seq_len": LENGTH,
                "cache": str(tmp_path / "text"),
            },
            "batch_size": 4,
            "val_fraction": 0.2,
            "teacher_cache": {"dir": "cache", "k": K},
        },
        "teacher": TEACHER.model_dump(),
        "student": {"model": "hf_causal_lm", "kwargs": {"config": LLAMA}},
        "terms": [{"name": "kd", "loss": "fused_linear_kd", "teacher": "cache", "temperature": 2}],
        "train": {"seed": 3},
    }
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def split_rows(recipe: Path) -> dict[str, int]:
    data = load_recipe(recipe).data.model_copy(update={"teacher_cache": None})
    return {split: len(dataset) for split, dataset in build_datasets(data).items()}


def number(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d,.]+)", text)
    assert match, f"{label!r} not in the output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_cache_teacher_writes_the_cache_and_reports_size_and_error(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cache-teacher", str(recipe), "--rows-per-shard", "5"]
    assert main([*argv, "--error-batches", "2"]) == 0
    out = capsys.readouterr().out
    directory, rows = tmp_path / "cache", split_rows(recipe)
    manifest, val = read_manifest(directory), read_manifest(directory / "val")
    assert manifest["complete"] and len(manifest["shards"]) == -(-rows["train"] // 5) > 1
    assert manifest["rows"] == rows["train"] and val["rows"] == rows["val"] and val["complete"]
    assert manifest["k"] == K and manifest["temperature"] == val["temperature"] == 2.0
    assert manifest["tokenizer_fingerprint"] is not None
    teacher = build_model(TEACHER, "teacher")  # with the checkpoint, as training loads it
    assert manifest["teacher_fingerprint"] == teacher_fingerprint(teacher)
    assert number(out, "tokens cached") == (rows["train"] + rows["val"]) * LENGTH
    assert number(out, "bytes on disk") == manifest["bytes_on_disk"]
    assert f"{K * (2 + 2) + 2} stored" in out
    error = manifest["error"]
    assert error["batches"] == 2 and error["temperature"] == 2.0
    assert number(out, "loss relative error") == pytest.approx(error["loss_relative_error"], 1e-3)
    assert number(out, "gradient relative error") == pytest.approx(
        error["grad_relative_error"], 1e-3
    )
    assert 0 < error["grad_relative_error"] < 1
    # run again: nothing is rewritten
    shards = {path: path.read_bytes() for path in directory.rglob("shard-*")}
    assert main([*argv, "--error-batches", "0"]) == 0
    count = len(manifest["shards"])
    assert f"train: {count} of {count} shards in cache; verifying them\n" in capsys.readouterr().out
    assert shards == {path: path.read_bytes() for path in directory.rglob("shard-*")}


def test_an_interrupted_cache_teacher_resumes(
    recipe: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchkd.lm.cache import write as teacher_cache

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
    assert re.search(
        r"train: 1 of \d+ shards in cache; verifying them, then resuming", capsys.readouterr().out
    )
    reference = sorted((tmp_path / "reference").rglob("shard-*"))
    assert len(reference) > 2
    for shard in reference:
        resumed = tmp_path / "cache" / shard.relative_to(tmp_path / "reference")
        assert resumed.read_bytes() == shard.read_bytes()


def test_training_reads_the_cache_without_a_teacher(recipe: Path, tmp_path: Path) -> None:
    assert main(["cache-teacher", str(recipe), "--error-batches", "0"]) == 0
    loaders = build_loaders(load_recipe(recipe).data)
    assert isinstance(loaders.train.dataset.dataset, TeacherCacheDataset)
    batch = next(iter(loaders.train))
    assert batch["teacher_topk_ids"].shape == (4, LENGTH, K)
    assert batch["teacher_topk_log_probs"].dtype == torch.float32
    assert batch["teacher_topk_tail"].shape == (4, LENGTH)
    assert next(iter(loaders.val))["teacher_topk_ids"].shape[-1] == K  # terms are evaluated
    assert "teacher_topk_ids" not in next(iter(loaders.test))  # the test split reads no term

    # no teacher in memory: the recipe names one (for cache-teacher), training builds none
    assert len(build_distiller(load_recipe(recipe)).teachers) == 0
    assert len(build_distiller(load_recipe(recipe, ["terms.0.teacher=logits"])).teachers) == 1
    assert main(["train", str(recipe), *FAST, "--run-dir", "run"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_training_refuses_a_cache_of_another_temperature(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cache-teacher", str(recipe), "--error-batches", "0"]) == 0
    capsys.readouterr()
    assert main(["train", str(recipe), *FAST, "terms.0.temperature=4.0"]) == 2
    message = capsys.readouterr().err
    assert "terms.0.temperature: the term reads the teacher cache at temperature 4.0" in message
    assert "written at temperature 2.0" in message and "data.teacher_cache.dir" in message
    moved = ["terms.0.temperature=null", "terms.0.loss_kwargs={temperature: 3.0}"]
    with pytest.raises(ConfigError, match=r"terms\.0\.loss_kwargs\.temperature: .* 3\.0"):
        check_teacher_cache(load_recipe(recipe, moved))
    with pytest.raises(ConfigError, match="no teacher cache in"):
        check_teacher_cache(load_recipe(recipe, ["data.teacher_cache.dir=elsewhere"]))
    check_teacher_cache(load_recipe(recipe))  # the cache's temperature: accepted


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
    assert main(["cache-teacher", str(recipe), "--dir", "full"]) == 2
    assert "not empty and holds no teacher cache" in capsys.readouterr().err
    assert main(["cache-teacher", str(recipe), "teacher=null"]) == 2
    assert "runs the recipe's teacher" in capsys.readouterr().err


def refused(capsys: pytest.CaptureFixture[str], code: int, *named: str) -> str:
    """Exit code 2, each of ``named`` in the message, no traceback; returns stderr."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for text in named:
        assert text in err, err
    return err


def written_cache(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["cache-teacher", str(recipe), "--rows-per-shard", "5", "--error-batches", "0"]) == 0
    )
    capsys.readouterr()


def test_training_refuses_a_cache_of_another_teacher(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written_cache(recipe, capsys)
    torch.manual_seed(6)
    other = build_model(TEACHER.model_copy(update={"checkpoint": None}), "teacher")
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    code = main(
        ["train", str(recipe), *FAST, "teacher.checkpoint=other.safetensors", "--run-dir", "run"]
    )
    refused(capsys, code, "teacher: the teacher cache in cache", "written from another teacher")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"teacher: .* another teacher"):  # another kwarg too
        check_teacher_cache(load_recipe(recipe, ["teacher.kwargs.config.hidden_size=48"]))
    check_teacher_cache(load_recipe(recipe, ["teacher=null"]))  # no teacher named: not compared


@pytest.mark.parametrize("split", ["train", "val"])
def test_training_refuses_a_damaged_late_shard_before_the_first_step(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], split: str
) -> None:
    written_cache(recipe, capsys)
    directory = tmp_path / "cache" if split == "train" else tmp_path / "cache" / "val"
    last = sorted(directory.glob("shard-*.safetensors"))[-1]
    raw = bytearray(last.read_bytes())
    raw[-3] ^= 0x01
    last.write_bytes(bytes(raw))
    code = main(["train", str(recipe), *FAST, "--run-dir", "run"])
    refused(capsys, code, f"data.teacher_cache ({split} split)", f"{last.name} is damaged")
    assert not (tmp_path / "run").exists()
    code = main(["cache-teacher", str(recipe), "--rows-per-shard", "5"])
    named = str(last.relative_to(tmp_path))
    refused(capsys, code, f"{named} is damaged")  # rerunning verifies, does not trust


def test_training_refuses_an_edited_manifest(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written_cache(recipe, capsys)
    path = tmp_path / "cache" / "manifest.json"
    path.write_text(path.read_text().replace('"k": 8', '"k": 9'))
    code = main(["train", str(recipe), *FAST, "--run-dir", "run"])
    refused(capsys, code, "data.teacher_cache.dir (train split)", "manifest.json was edited")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            "data.teacher_cache.k=400",
            f"data.teacher_cache.k: k must be at most the teacher's vocabulary ({VOCAB}), got 400",
        ),
        (
            "terms.0={name: kd, loss: fused_linear_kd, teacher: cache, "
            "loss_kwargs: {temperature: 0}}",
            "terms.0.loss_kwargs.temperature: temperature must be in (0, ",
        ),
        ("terms.0.loss_kwargs={chunk_size: 0}", "terms.0.loss_kwargs: chunk_size must be"),
    ],
)
def test_cache_teacher_refuses_bad_values_naming_their_yaml_path(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, named: str
) -> None:
    refused(capsys, main(["cache-teacher", str(recipe), override]), named)
    assert not (tmp_path / "cache").exists()
    if override.startswith("terms"):  # training refuses the same recipe
        assert main(["train", str(recipe), *FAST, override]) == 2


def test_a_cache_only_run_is_not_warned_about_the_teacher_it_never_builds(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_weights = "teacher.checkpoint=null"
    # cache-teacher runs the teacher: without weights it is refused unless said on purpose
    assert main(["cache-teacher", str(recipe), no_weights, "--error-batches", "0"]) == 2
    assert "teacher.checkpoint: required" in capsys.readouterr().err
    on_purpose = [no_weights, "teacher.untrained=true"]
    assert main(["cache-teacher", str(recipe), *on_purpose, "--error-batches", "0"]) == 0
    capsys.readouterr()
    # training from the cache alone never builds the teacher: neither refused nor warned
    assert main(["train", str(recipe), *FAST, no_weights, "--run-dir", "run"]) == 0
    err = capsys.readouterr().err
    assert "teacher.checkpoint" not in err and "no checkpoint" not in err


SAMPLED = "data.teacher_cache={dir: cache, kind: sampled, samples: 6, seed: 1}"


def test_a_sampled_cache_is_written_read_and_trained_from(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cache-teacher", str(recipe), SAMPLED, "--rows-per-shard", "5"]
    assert main([*argv, "--error-batches", "2"]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(tmp_path / "cache")
    assert manifest["kind"] == "sampled" and manifest["samples"] == 6 and manifest["seed"] == 1
    assert manifest["k"] is None and read_manifest(tmp_path / "cache" / "val")["samples"] == 6
    assert "(sampled, 6 samples, seed 1, temperature 2)" in out
    assert f"{6 * (2 + 1) + 4} stored" in out
    assert manifest["error"]["grad_relative_error"] > 0
    loaders = build_loaders(load_recipe(recipe, [SAMPLED]).data)
    batch = next(iter(loaders.train))
    assert batch["teacher_sample_ids"].shape == batch["teacher_sample_counts"].shape
    assert batch["teacher_sample_counts"].sum(-1).eq(6).all()
    assert batch["teacher_entropy"].shape == (4, LENGTH) and "teacher_topk_ids" not in batch
    assert main(["train", str(recipe), *FAST, SAMPLED, "--run-dir", "run"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    # read as a top-k cache, or with other samples: refused before the first step
    code = main(["train", str(recipe), *FAST, "--run-dir", "other"])
    refused(capsys, code, "data.teacher_cache (train split)", "is a 'sampled' cache")
    other = SAMPLED.replace("samples: 6", "samples: 12")
    code = main(["train", str(recipe), *FAST, other, "--run-dir", "other"])
    refused(capsys, code, "written with samples=6, but samples=12")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (
            f"data.teacher_cache={{dir: cache, kind: sampled, k: {VOCAB}}}",
            "data.teacher_cache.k: k (the exact head of a sampled cache) must be below",
        ),
        (
            "data.teacher_cache={dir: cache, samples: 8}",
            "samples: is for a kind: sampled cache, but kind is topk",
        ),
        (
            "data.teacher_cache={dir: cache, kind: sampled, samples: 70000}",
            "data.teacher_cache.samples: samples must be at most 65535",
        ),
        (
            "terms.0.loss_kwargs={divergence: reverse_kl}",
            "terms.0.loss_kwargs.divergence: a sampled teacher cache",
        ),
    ],
)
def test_a_sampled_cache_refuses_bad_settings_naming_their_yaml_path(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, named: str
) -> None:
    overrides = [SAMPLED, override] if override.startswith("terms") else [override]
    refused(capsys, main(["cache-teacher", str(recipe), *overrides]), named)
    assert not (tmp_path / "cache").exists()


def test_a_sampled_cache_with_an_exact_head_trains(
    recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = "data.teacher_cache={dir: cache, kind: sampled, samples: 6, k: 4}"
    assert main(["cache-teacher", str(recipe), head, "--error-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "(sampled, 6 samples, exact top-4, seed 0, temperature 2)" in out
    assert f"{6 * (2 + 1) + 4 + 4 * (2 + 4) + 4} stored" in out
    batch = next(iter(build_loaders(load_recipe(recipe, [head]).data).train))
    assert batch["teacher_topk_ids"].shape == (4, LENGTH, 4)
    assert batch["teacher_sample_counts"].sum(-1).eq(6).all()
    assert main(["train", str(recipe), *FAST, head, "--run-dir", "run"]) == 0
