"""Tokenizers for text data: a byte-level BPE trained offline, local loading, a fingerprint.

``transformers`` and ``tokenizers`` are an optional extra (``pip install 'torchkd[hf]'``); they are
imported inside these functions only.

Byte-level BPE (Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units",
2016; byte-level as in GPT-2, Radford et al., 2019) starts from the 256 byte values, so any text
is encoded without an unknown token, and merges the most frequent adjacent pair until the
vocabulary reaches ``vocab_size``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkd._extras import require

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "EOS_TOKEN",
    "PAD_TOKEN",
    "load_tokenizer",
    "require_hf",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"  # ends every document; id 0 of a trained tokenizer
PAD_TOKEN = "<|pad|>"  # id 1 of a trained tokenizer
_BYTE_ALPHABET_SIZE = 256
_CALL_SETTINGS = ("padding", "truncation")


def require_hf(what: str) -> None:
    """Raise ``ImportError`` naming the ``hf`` extra unless ``transformers`` and ``tokenizers``
    import; ``what`` says which feature needs them."""
    for module in ("tokenizers", "transformers"):
        require(module, "hf", what)


def _texts(texts_or_files: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Each ``str`` as a text, each ``os.PathLike`` as the UTF-8 contents of that file."""
    for item in texts_or_files:
        if isinstance(item, str):
            yield item
        elif isinstance(item, os.PathLike):
            yield Path(item).read_text(encoding="utf-8")
        else:
            raise TypeError(
                f"texts_or_files: expected str (a text) or a path (a file), got "
                f"{type(item).__name__}"
            )


def train_bpe_tokenizer(
    texts_or_files: Iterable[str | os.PathLike[str]],
    vocab_size: int,
    directory: str | os.PathLike[str],
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer offline and ``save_pretrained`` it into ``directory``.

    Deterministic: the same texts and ``vocab_size`` give a byte-identical ``tokenizer.json``.
    The special tokens are ``<|endoftext|>`` (id 0; the eos token, which ends every document
    of the ``text`` dataset) and ``<|pad|>`` (id 1; the pad token). No bos token is added.

    Args:
        texts_or_files: texts (``str``) and files (``pathlib.Path`` or another
            ``os.PathLike``, read as UTF-8), in any mix.
        vocab_size: vocabulary size including the 256 byte tokens and the two special tokens
            (the result is smaller when the texts offer fewer merges).
        directory: where ``tokenizer.json`` and ``tokenizer_config.json`` are written; load
            it again with :func:`load_tokenizer`.

    Example:
        >>> import tempfile
        >>> tokenizer = train_bpe_tokenizer(["hello world"] * 4, 300, tempfile.mkdtemp())
        >>> tokenizer.decode(tokenizer("hello world")["input_ids"])
        'hello world'
    """
    require_hf("train_bpe_tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = _BYTE_ALPHABET_SIZE + 2
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be an integer >= {minimum} (256 bytes + 2 special tokens), "
            f"got {vocab_size!r}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(texts_or_files), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved in the local directory ``path`` (``AutoTokenizer``, local files only).

    Loads a tokenizer of :func:`train_bpe_tokenizer` or a model's own (e.g. the directory of
    a saved Hugging Face model). torchkd never downloads: a path that is not an existing
    directory (a hub id, a typo) raises ``ValueError``.
    """
    require_hf("load_tokenizer")
    from transformers import AutoTokenizer

    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(
            f"tokenizer: {str(path)!r} is not an existing directory; torchkd never downloads "
            "(a hub id is not accepted). Train one with torchkd.data.train_bpe_tokenizer, or "
            "save a tokenizer locally with tokenizer.save_pretrained(directory) where you have "
            "network access, and pass that directory"
        )
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 (hex) of what decides the token ids: the serialized tokenizer (normalizer,
    pre-tokenizer, vocabulary, merges, added tokens) and the special tokens.

    Two tokenizers with the same fingerprint encode every text to the same ids; the text
    dataset's cache and the teacher cache are keyed by it.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    described: dict[str, Any] = {
        "special_tokens": {
            name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())
        }
    }
    if backend is not None:  # padding/truncation: call-time settings, not the encoding
        serialized = json.loads(backend.to_str())
        described["tokenizer"] = {
            key: value for key, value in serialized.items() if key not in _CALL_SETTINGS
        }
    else:  # a slow (Python) tokenizer: its vocabulary in id order
        described["class"] = type(tokenizer).__name__
        described["vocab"] = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    text = json.dumps(described, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
