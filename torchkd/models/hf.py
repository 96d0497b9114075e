"""Hugging Face transformers as torchkd models: causal LMs and encoders, from a local directory
or built from a config dict. ``transformers`` is an optional extra (``pip install 'torchkd[hf]'``),
imported only when one of these is built. Nothing is ever downloaded.

Recipe::

    student: {model: hf_causal_lm, kwargs: {config: {model_type: llama, vocab_size: 512, ...}}}
    teacher: {model: hf_causal_lm, kwargs: {path: models/teacher}}

Loading and saving run under :func:`quiet_progress_bars`: transformers' per-load tqdm bars
("Loading weights", "Writing model shards") stay out of torchkd's output.

Sentence encoders (``hf_sentence_encoder``): an encoder whose output is the L2-normalized mean
of its last hidden states over the real tokens (:class:`SentenceEncoder`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchkd._extras import require
from torchkd.models.registry import MODELS

__all__ = [
    "MeanPool",
    "SentenceEncoder",
    "hf_causal_lm",
    "hf_encoder",
    "hf_sentence_encoder",
    "quiet_progress_bars",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _transformers() -> Any:
    return require("transformers", "hf", "Hugging Face models")


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Turn transformers' tqdm bars off inside the block (restored after it, when they were on)."""
    progress = _transformers().utils.logging
    was_enabled = progress.is_progress_bar_enabled()
    progress.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            progress.enable_progress_bar()


def _dtype(dtype: str | None) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {dtype!r}")
    return DTYPES[dtype]


def _build(auto_class: str, path: str | None, config: dict[str, Any] | None, dtype: str | None):
    if (path is None) == (config is None):
        raise ValueError(
            "give exactly one of path (a local model directory) and config (a dict with "
            f"model_type, e.g. {{'model_type': 'llama', ...}}), got path={path!r}, "
            f"config={config!r}"
        )
    torch_dtype = _dtype(dtype)
    transformers = _transformers()
    auto = getattr(transformers, auto_class)
    if path is not None:
        if not Path(path).is_dir():
            raise ValueError(
                f"path {path!r} is not a local directory; torchkd never downloads models. Save "
                "the model locally once (e.g. on a machine with access: "
                f"{auto_class}.from_pretrained(name).save_pretrained('DIR'), and the tokenizer "
                "likewise) and give that directory as path"
            )
        kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
        with quiet_progress_bars():
            return auto.from_pretrained(path, local_files_only=True, **kwargs)
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(
            f"config must be a dict with a 'model_type' (e.g. 'llama', 'bert'), got {config!r}"
        )
    options = dict(config)
    model_config = transformers.AutoConfig.for_model(options.pop("model_type"), **options)
    model = auto.from_config(model_config)
    return model if torch_dtype is None else model.to(torch_dtype)


@MODELS.register("hf_causal_lm")
def hf_causal_lm(
    path: str | None = None, config: dict[str, Any] | None = None, dtype: str | None = None
) -> nn.Module:
    """A causal language model (``AutoModelForCausalLM``).

    Args:
        path: a local directory written by ``save_pretrained`` (loaded with
            ``local_files_only=True``; a hub id is refused).
        config: instead of ``path``, a config dict with ``model_type`` (random initialisation),
            e.g. ``{"model_type": "llama", "vocab_size": 512, "hidden_size": 64, ...}``.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``, or None (the saved / default).

    Raises:
        ImportError: ``transformers`` is not installed.
        ValueError: both or neither of ``path`` and ``config``; ``path`` not a directory.
    """
    return _build("AutoModelForCausalLM", path, config, dtype)


@MODELS.register("hf_encoder")
def hf_encoder(
    path: str | None = None, config: dict[str, Any] | None = None, dtype: str | None = None
) -> nn.Module:
    """An encoder (``AutoModel``, e.g. BERT); arguments as :func:`hf_causal_lm`."""
    return _build("AutoModel", path, config, dtype)


class MeanPool(nn.Module):
    """Mean of the hidden states over the positions where ``attention_mask`` is 1.

    .. math::
        e = \\frac{\\sum_t m_t h_t}{\\max(\\sum_t m_t, \\varepsilon)}

    Example:
        >>> hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
        >>> MeanPool()(hidden, torch.tensor([[1, 1, 0]]))
        tensor([[2., 3.]])
    """

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"hidden must be [B, L, D] and attention_mask [B, L], got "
                f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class SentenceEncoder(nn.Module):
    """An encoder returning L2-normalized mean-pooled sentence embeddings ``[B, D]``: the
    pooling of sentence-transformers models such as all-MiniLM-L6-v2 (``modules.json``:
    Transformer, Pooling with ``pooling_mode_mean_tokens``, Normalize).

    Submodules: ``encoder`` (the Hugging Face model) and ``pool`` (:class:`MeanPool`, whose
    output is the unnormalized embedding), both tappable by path.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = MeanPool()

    def forward(self, input_ids: Tensor, attention_mask: Tensor, **inputs: Tensor) -> Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        return F.normalize(self.pool(hidden, attention_mask), dim=-1)


@MODELS.register("hf_sentence_encoder")
def hf_sentence_encoder(
    path: str | None = None, config: dict[str, Any] | None = None, dtype: str | None = None
) -> SentenceEncoder:
    """:func:`hf_encoder` wrapped in a :class:`SentenceEncoder` (mean pooling, L2 norm)."""
    return SentenceEncoder(hf_encoder(path, config, dtype))
