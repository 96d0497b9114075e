"""The exact map between two tokenizers' vocabularies: the tokens whose strings are equal once
each tokenizer's marker conventions are undone (the ``hybrid_uld`` loss's ``shared_ids``).

Each token is reduced to the bytes it stands for:

- a byte-level BPE token (GPT-2 style, a ``ByteLevel`` decoder): each character maps back to
  the byte it encodes (``Ġ`` is the space byte, ``Ċ`` the newline byte, ...);
- any other token: ``▁`` (the SentencePiece word marker) is a space, ``<0xNN>`` is byte
  ``NN``, and the rest is UTF-8;
- a special or added token (``<|endoftext|>``): its content, kept apart from text tokens.

Tokens of one vocabulary that reduce to the same bytes are left out (the map stays one to
one).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["shared_vocabulary", "token_bytes"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPECIAL = b"\x00special:"  # no text token reduces to bytes starting with a NUL and this


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE character of each byte value, inverted: printable Latin-1 bytes
    stand for themselves, the other bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    characters: dict[str, int] = {chr(byte): byte for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in printable:
            characters[chr(256 + shifted)] = byte
            shifted += 1
    return characters


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    decoders = (
        decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    )
    return any(part.get("type") == "ByteLevel" for part in decoders)


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> dict[int, bytes]:
    """``{token id: the bytes it stands for}`` (special tokens marked apart; see the module
    docstring)."""
    special = {str(token) for token in tokenizer.all_special_tokens}
    special |= {str(token) for token in getattr(tokenizer, "added_tokens_encoder", {})}
    alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else None
    reduced: dict[int, bytes] = {}
    for token, index in tokenizer.get_vocab().items():
        if token in special:
            reduced[index] = _SPECIAL + token.encode("utf-8")
        elif alphabet is not None and all(character in alphabet for character in token):
            reduced[index] = bytes(alphabet[character] for character in token)
        elif _BYTE_TOKEN.fullmatch(token):
            reduced[index] = bytes([int(token[3:5], 16)])
        else:
            reduced[index] = token.replace("\u2581", " ").encode("utf-8")
    return reduced


def _unique(reduced: dict[int, bytes]) -> dict[bytes, int]:
    seen: dict[bytes, list[int]] = {}
    for index, value in reduced.items():
        seen.setdefault(value, []).append(index)
    return {value: ids[0] for value, ids in seen.items() if len(ids) == 1}


def shared_vocabulary(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> Tensor:
    """``[K, 2]`` int64 (student id, teacher id) of the tokens both tokenizers hold, ordered
    by student id: equal tokenizers give every id paired with itself.

    Example:
        >>> import tempfile
        >>> from torchkd.data.tokenizer import train_bpe_tokenizer
        >>> small = train_bpe_tokenizer(["hello world"] * 4, 260, tempfile.mkdtemp())
        >>> shared = shared_vocabulary(small, small)
        >>> bool((shared[:, 0] == shared[:, 1]).all()), len(shared) == len(small)
        (True, True)
    """
    student_ids, teacher_ids = _unique(token_bytes(student)), _unique(token_bytes(teacher))
    pairs = sorted(
        (index, teacher_ids[value]) for value, index in student_ids.items() if value in teacher_ids
    )
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
