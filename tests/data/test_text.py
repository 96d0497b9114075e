"""The ``text`` dataset: packing, prompt/completion masking, splits by document, cache, errors,
and loading through ``build_loaders``."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

import torchkd.data.text as text_module
from torchkd.config import DataConfig, build_loaders
from torchkd.data import TextDataset, create_dataset, load_tokenizer, train_bpe_tokenizer
from torchkd.data.documents import split_documents

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 plain-text documents of different lengths, 2 jsonl files of pairs, a tokenizer."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "docs").mkdir()
    for number in range(12):
        words = [WORDS[(number * 5 + k) % len(WORDS)] for k in range(3 + 4 * number)]
        (root / "docs" / f"doc{number:02d}.txt").write_text(f"# {number}\n" + " ".join(words))
    records = [
        {
            "prompt": f"Q{n}: " + " ".join(WORDS[: n % 7 + 1]),
            "completion": " " + WORDS[n % 12] * (n % 3 + 1),
        }
        for n in range(20)
    ]
    for part in range(2):
        lines = [json.dumps(record) for record in records[part * 10 : (part + 1) * 10]]
        (root / f"pairs{part}.jsonl").write_text("\n".join(lines) + "\n\n")
    texts = sorted((root / "docs").glob("*.txt")) + [json.dumps(r) for r in records]
    train_bpe_tokenizer(texts, 300, root / "tokenizer")
    return root


def plain(corpus: Path, split: str = "train", **kwargs: Any) -> TextDataset:
    settings = {
        "files": [str(corpus / "docs" / "*.txt")],
        "tokenizer": corpus / "tokenizer",
        "seq_len": 8,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "cache": corpus / "cache",
        **kwargs,
    }
    return create_dataset("text", split, **settings)  # type: ignore[return-value]


def pairs(corpus: Path, split: str = "train", **kwargs: Any) -> TextDataset:
    settings = {
        "files": [corpus / "pairs0.jsonl", str(corpus / "pairs1.jsonl")],
        "tokenizer": corpus / "tokenizer",
        "seq_len": 12,
        "format": "prompt_completion",
        "max_prompt_length": 5,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "cache": corpus / "cache",
        **kwargs,
    }
    return create_dataset("text", split, **settings)  # type: ignore[return-value]


def test_packing_keeps_every_token_in_order_in_full_windows(corpus: Path) -> None:
    data = plain(corpus, seq_len=7)
    tokenizer = load_tokenizer(corpus / "tokenizer")
    stream: list[int] = []
    for source in data.documents:
        text = Path(source).read_text()
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [0]
    assert len(data) == len(stream) // 7 and len(data) > 3
    windows = torch.stack([data[i]["inputs"]["input_ids"] for i in range(len(data))])
    assert windows.shape == (len(data), 7) and windows.dtype == torch.int64
    assert windows.flatten().tolist() == stream[: len(data) * 7]
    batch = data[list(range(len(data)))]
    assert torch.equal(batch["inputs"]["input_ids"], windows)
    assert bool((batch["inputs"]["attention_mask"] == 1).all())
    labels = batch["labels"]
    assert torch.equal(labels[:, :-1], windows[:, 1:])
    assert bool((labels[:, -1] == -100).all())
    assert batch["index"].tolist() == list(range(len(data)))


def test_sample_format(corpus: Path) -> None:
    sample = pairs(corpus)[3]
    assert set(sample) == {"inputs", "labels", "index", "prompt_ids", "prompt_mask"}
    assert set(sample["inputs"]) == {"input_ids", "attention_mask"}
    for tensor in (*sample["inputs"].values(), sample["labels"], sample["prompt_ids"]):
        assert tensor.dtype == torch.int64 and tensor.dim() == 1
    assert sample["index"].dim() == 0 and int(sample["index"]) == 3
    assert set(plain(corpus)[0]) == {"inputs", "labels", "index"}


def test_prompt_completion_masks_prompt_and_padding_and_left_pads_prompts(corpus: Path) -> None:
    data = pairs(corpus, seq_len=9, max_prompt_length=5)
    tokenizer = load_tokenizer(corpus / "tokenizer")
    records = [
        json.loads(line)
        for part in (0, 1)
        for line in (corpus / f"pairs{part}.jsonl").read_text().splitlines()
        if line
    ]
    assert len(data) == len(data.documents) == 12
    truncated_prompts = cut_completions = 0
    for row, source in enumerate(data.documents):
        file, line = source.rsplit(":", 1)
        part = int(Path(file).stem[-1])
        record = records[part * 10 + int(line) - 1]
        prompt = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        kept_prompt = prompt[-5:]
        tokens = (kept_prompt + completion + [0])[:9]
        truncated_prompts += len(prompt) > 5
        cut_completions += len(kept_prompt + completion) + 1 > 9
        sample = data[row]
        length = len(tokens)
        assert sample["inputs"]["input_ids"].tolist() == tokens + [1] * (9 - length)
        assert sample["inputs"]["attention_mask"].tolist() == [1] * length + [0] * (9 - length)
        # label t is token t + 1, kept only when token t + 1 is a completion token (or eos)
        expected = [-100] * 9
        for position in range(len(kept_prompt) - 1, length - 1):
            expected[position] = tokens[position + 1]
        assert sample["labels"].tolist() == expected
        padding = 5 - len(kept_prompt)
        assert sample["prompt_ids"].tolist() == [1] * padding + kept_prompt
        assert sample["prompt_mask"].tolist() == [0] * padding + [1] * len(kept_prompt)
    assert truncated_prompts > 0 and cut_completions > 0  # both truncations were exercised


def test_splits_are_disjoint_by_document_cover_all_and_are_seeded(corpus: Path) -> None:
    sources = {split: plain(corpus, split).documents for split in ("train", "val", "test")}
    assert [len(sources[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    every = sources["train"] + sources["val"] + sources["test"]
    assert sorted(every) == sorted(str(p) for p in (corpus / "docs").glob("*.txt"))
    assert len(set(every)) == 12
    reseeded = {split: plain(corpus, split, split_seed=1).documents for split in ("val", "test")}
    assert reseeded != {split: sources[split] for split in ("val", "test")}
    assert plain(corpus, "val", split_seed=1).documents == reseeded["val"]
    parts = split_documents(1000, 0.1, 0.2, seed=3)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [700, 100, 200]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(1000))


def test_cache_hit_is_identical_and_the_key_follows_file_contents(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for path in (corpus / "docs").glob("*.txt"):
        (docs / path.name).write_text(path.read_text())
    settings = {"files": [str(docs / "*.txt")], "cache": tmp_path / "cache"}
    first = plain(corpus, **settings)
    assert [p.name for p in (tmp_path / "cache" / "text").iterdir()] == [
        next((tmp_path / "cache" / "text").iterdir()).name
    ]  # one file, no temp file left behind

    def no_build(*args: object) -> None:
        raise AssertionError("a cache hit must not tokenize")

    with monkeypatch.context() as patch:
        patch.setattr(text_module, "_build", no_build)
        again = plain(corpus, **settings)
        val = plain(corpus, "val", **settings)
    assert again.tensors.keys() == first.tensors.keys()
    assert all(torch.equal(again.tensors[k], first.tensors[k]) for k in first.tensors)
    assert again.fingerprint == first.fingerprint != val.fingerprint
    assert plain(corpus, seq_len=9, **settings).fingerprint != first.fingerprint

    changed = sorted(docs.glob("*.txt"))[0]
    changed.write_text(changed.read_text() + " omega")
    edited = plain(corpus, **settings)
    assert len(list((tmp_path / "cache" / "text").iterdir())) == 3  # seq_len 8, 9, edited
    assert edited.fingerprint != first.fingerprint


def flip_in_tensor(path: Path, name: str) -> None:
    """Flip the lowest bit of the first element of tensor ``name`` in a safetensors file."""
    raw = bytearray(path.read_bytes())
    (header_size,) = struct.unpack("<Q", raw[:8])
    start = json.loads(raw[8 : 8 + header_size])[name]["data_offsets"][0]
    raw[8 + header_size + start] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["token id", "header", "truncated"])
def test_a_damaged_cache_file_is_rebuilt_with_a_notice(
    tmp_path: Path, corpus: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    fresh = plain(corpus, cache=tmp_path / "fresh")
    plain(corpus, cache=tmp_path / "cache")
    (path,) = (tmp_path / "cache" / "text").iterdir()
    if damage == "token id":
        flip_in_tensor(path, "train.input_ids")
    elif damage == "header":
        raw = bytearray(path.read_bytes())
        raw[12] ^= 0x20  # inside the JSON header
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(path.read_bytes()[:-40])
    capsys.readouterr()
    again = plain(corpus, cache=tmp_path / "cache")
    assert again.fingerprint == fresh.fingerprint  # the samples of a fresh build
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and f"text dataset cache {path} is damaged" in notice
    assert "rebuilding it" in notice
    plain(corpus, cache=tmp_path / "cache")  # the rebuilt file is read back whole, quietly
    assert capsys.readouterr().err == ""


def test_build_loaders_batches_nested_samples_reproducibly(corpus: Path) -> None:
    kwargs = {
        "files": [str(corpus / "docs" / "*.txt")],
        "tokenizer": str(corpus / "tokenizer"),
        "seq_len": 6,
        "test_fraction": 0.25,
        "cache": str(corpus / "cache"),
    }
    config = DataConfig(dataset="text", batch_size=3, val_fraction=0.25, seed=2, kwargs=kwargs)
    loaders = build_loaders(config, seed=5)
    batches = list(loaders.train)
    again = list(build_loaders(config, seed=5).train)
    data = create_dataset("text", "train", val_fraction=0.25, split_seed=2, **kwargs)
    assert len(batches) == -(-len(data) // 3)
    seen = []
    for batch, repeated in zip(batches, again, strict=True):
        assert torch.equal(batch["index"], repeated["index"])
        expected = data[batch["index"].tolist()]
        assert torch.equal(batch["inputs"]["input_ids"], expected["inputs"]["input_ids"])
        assert torch.equal(batch["labels"], expected["labels"])
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(data))) and seen != sorted(seen)
    val = next(iter(loaders.val))
    assert val["inputs"]["attention_mask"].shape == (3, 6)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            '{"text": "fine"}\n{"body": "x"}\n',
            r"bad\.jsonl:2: format='text' needs .*\['text'\], got \['body'\]",
        ),
        ('{"text": "fine"}\n\n[1, 2]\n', r"bad\.jsonl:3: format='text' needs .* got list"),
        ('{"text": 5}\n', r"bad\.jsonl:1: format='text' needs"),
        ('{"text": "a"\n', r"bad\.jsonl:1: not a JSON object"),
    ],
)
def test_bad_jsonl_records_name_file_and_line(
    tmp_path: Path, corpus: Path, lines: str, message: str
) -> None:
    bad = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=message):
        plain(corpus, files=[bad], cache=tmp_path)


def test_errors(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(ValueError, match=r"no file matched \['nowhere/\*\.txt', 'missing\.txt'\]"):
        plain(corpus, files=["nowhere/*.txt", str(corpus / "pairs0.jsonl"), "missing.txt"])
    with pytest.raises(
        ValueError, match="seq_len=5 is too small: it must exceed max_prompt_length=5"
    ):
        pairs(corpus, seq_len=5)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 2"):
        plain(corpus, seq_len=1)
    with pytest.raises(
        ValueError, match=r"split 'val' has no documents: 12 documents .* raise val_fraction"
    ):
        plain(corpus, "val", val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction must be < 1"):
        plain(corpus, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="split 'test' has fewer than seq_len=4000 tokens"):
        plain(corpus, "test", seq_len=4000)
    with pytest.raises(ValueError, match="max_prompt_length applies to format='prompt_completion'"):
        plain(corpus, max_prompt_length=3)
    with pytest.raises(ValueError, match=r"doc00\.txt: format='prompt_completion' reads \.jsonl"):
        pairs(corpus, files=[corpus / "docs" / "doc00.txt"])
    with pytest.raises(ValueError, match="format must be one of"):
        plain(corpus, format="chat")
    with pytest.raises(ValueError, match="never downloads"):
        plain(corpus, tokenizer="gpt2")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8"):
        plain(corpus, files=[latin], cache=tmp_path)
