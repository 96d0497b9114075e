"""Everything language-model-specific: a causal LM's body and output projection
(:mod:`torchkd.lm.model`), token labels and the token-loss normalizer (:mod:`torchkd.lm.tokens`),
the offline top-k teacher cache (:mod:`torchkd.lm.cache`: format, writer, reader, its error
against the dense teacher) and on-policy sampling (:mod:`torchkd.lm.on_policy`).

A causal LM computes ``logits = s * softcap(h W^T + b)`` from the final hidden states ``h`` of
its body. Token-level losses take ``h`` and ``W`` (:func:`torchkd.losses.fused_linear_kd_loss`)
so that the ``[tokens x vocabulary]`` logits are never built. Any Hugging Face
``*ForCausalLM`` qualifies (``get_decoder()`` and ``get_output_embeddings()``), as does a module
that has those two methods.
"""

from torchkd.lm.model import OutputProjection, is_causal_lm, last_hidden_state, output_projection
from torchkd.lm.tokens import (
    IGNORE_INDEX,
    TOKEN_NORMALIZER,
    TokenNormalizer,
    attention_mask,
    count_valid_tokens,
    is_token_labels,
    next_token_labels,
    read_labels,
)

__all__ = [
    "IGNORE_INDEX",
    "TOKEN_NORMALIZER",
    "OutputProjection",
    "TokenNormalizer",
    "attention_mask",
    "count_valid_tokens",
    "is_causal_lm",
    "is_token_labels",
    "last_hidden_state",
    "next_token_labels",
    "output_projection",
    "read_labels",
]
