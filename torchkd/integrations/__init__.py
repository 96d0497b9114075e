"""Bridges from torchkd to other training stacks (import the submodule you need, e.g.
``torchkd.integrations.transformers``; each imports its optional dependency on its own)."""
