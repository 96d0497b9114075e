"""The cross-modal demo's models: the all-MiniLM-L6-v2 teacher (docstrings; its embeddings are
computed once and cached, and the recipe's teacher :class:`CachedTeacher` returns them) and a
small transformer over BPE tokens (the code student, and the contrastive arm's docstring
encoder).

:class:`TokenEncoder`: token and learned position embeddings, ``layers`` pre-norm transformer
encoder layers, the mean of the last hidden states over the real tokens (submodule ``pool``),
a linear projection to ``out_dim`` (384, the teacher's width) and L2 normalisation:

.. math::
    e = \\frac{W \\bar h + b}{\\lVert W \\bar h + b \\rVert}, \\qquad
    \\bar h = \\frac{\\sum_l m_l h_l}{\\sum_l m_l}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torchkd.demo.crossmodal.data  # noqa: F401  (registers stdlib_code_docs for recipes)
from torchkd.demo.crossmodal.teacher import CachedTeacher, cached_teacher
from torchkd.demo.embeddings.models import minilm_teacher

__all__ = [
    "CachedTeacher",
    "MaskedMean",
    "TokenEncoder",
    "cached_teacher",
    "code_student",
    "minilm_teacher",
]


class MaskedMean(nn.Module):
    """The mean of ``hidden`` [B, L, H] over the positions where ``mask`` [B, L] is 1."""

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TokenEncoder(nn.Module):
    """``{"input_ids", "attention_mask"}`` [B, L] -> L2-normalized embedding [B, out_dim].

    Args:
        vocab_size: token ids are below it.
        width, layers, heads: the transformer's width, depth and attention heads (feed-forward
            ``4 x width``, no dropout).
        max_length: the longest input (learned positions).
        out_dim: the embedding's size.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        width: int = 128,
        layers: int = 2,
        heads: int = 4,
        max_length: int = 128,
        out_dim: int = 384,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Embedding(max_length, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pool = MaskedMean()
        self.projection = nn.Linear(width, out_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.shape[1] > self.positions.num_embeddings:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} positions, more than max_length "
                f"{self.positions.num_embeddings}"
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.tokens(input_ids) + self.positions(positions)
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        pooled = self.pool(self.norm(hidden), attention_mask)
        return F.normalize(self.projection(pooled), dim=-1)


def code_student(**kwargs: int) -> TokenEncoder:
    """The code student (:class:`TokenEncoder` with ``kwargs``), for recipes."""
    return TokenEncoder(**kwargs)
