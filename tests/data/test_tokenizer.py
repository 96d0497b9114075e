"""Byte-level BPE tokenizer: round trip, determinism, local-only loading, fingerprint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchkd.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    load_tokenizer,
    require_hf,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café, 東京, emoji 🙂 and tabs\tand\r\nnewlines",
]


def test_round_trip_of_seen_and_unseen_text(tmp_path: Path) -> None:
    tokenizer = train_bpe_tokenizer(TEXTS * 3, 300, tmp_path)
    unseen = "class Z:  # ünïcödé, never seen ∑\n\tpass"
    for text in [*TEXTS, unseen]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens([0, 1]) == [EOS_TOKEN, PAD_TOKEN]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)
    assert len(tokenizer) <= 300
    # merges were learnt: a frequent word is fewer tokens than bytes
    assert len(tokenizer("return", add_special_tokens=False)["input_ids"]) < len("return")


def test_files_and_texts_train_the_same_tokenizer(tmp_path: Path) -> None:
    files = []
    for number, text in enumerate(TEXTS):
        files.append(tmp_path / f"{number}.txt")
        files[-1].write_text(text, encoding="utf-8")
    from_texts = train_bpe_tokenizer(TEXTS, 280, tmp_path / "a")
    from_files = train_bpe_tokenizer(files, 280, tmp_path / "b")
    assert tokenizer_fingerprint(from_texts) == tokenizer_fingerprint(from_files)


def test_training_is_deterministic_to_the_byte(tmp_path: Path) -> None:
    train_bpe_tokenizer(TEXTS * 2, 290, tmp_path / "first")
    train_bpe_tokenizer(TEXTS * 2, 290, tmp_path / "second")
    first = (tmp_path / "first" / "tokenizer.json").read_bytes()
    assert first == (tmp_path / "second" / "tokenizer.json").read_bytes()
    train_bpe_tokenizer(TEXTS[:2] * 2, 290, tmp_path / "other")
    assert first != (tmp_path / "other" / "tokenizer.json").read_bytes()


def test_load_tokenizer_encodes_identically_with_the_same_fingerprint(tmp_path: Path) -> None:
    trained = train_bpe_tokenizer(TEXTS, 300, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded(TEXTS)["input_ids"] == trained(TEXTS)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id) == (0, 1)
    fingerprint = tokenizer_fingerprint(trained)
    assert len(fingerprint) == 64 and tokenizer_fingerprint(loaded) == fingerprint
    loaded(TEXTS, padding=True, truncation=True, max_length=4)  # call-time settings only
    assert tokenizer_fingerprint(loaded) == fingerprint
    other = train_bpe_tokenizer(TEXTS, 290, tmp_path / "smaller")
    assert tokenizer_fingerprint(other) != fingerprint


@pytest.mark.parametrize("path", ["gpt2", "no/such/directory"])
def test_load_tokenizer_never_downloads(path: str) -> None:
    with pytest.raises(ValueError, match="never downloads") as error:
        load_tokenizer(path)
    assert repr(path) in str(error.value)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 258"):
        train_bpe_tokenizer(TEXTS, 100, tmp_path)
    with pytest.raises(TypeError, match="texts_or_files: expected str"):
        train_bpe_tokenizer([b"bytes"], 300, tmp_path)  # type: ignore[list-item]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'torchkd\[hf\]'"):
        require_hf("the text dataset")
