"""FSDP2 sharding of one model, per transformer block.

:func:`shard_blocks` applies ``fully_shard`` to each transformer block of ``model`` (each
decoder layer of a Hugging Face causal LM), then to ``model`` itself. A block's parameters are
gathered for its own forward and backward only, so a process holds at most one block whole at
a time besides its shards; ``fully_shard`` at the root alone would gather the whole model for
every forward and keep it through the backward.

The parameters outside the blocks -- the embeddings, the final norm and the output projection,
tied or not -- form the model's own unit. With ``keep_root_gathered`` (a causal LM student)
that unit is not resharded after the forward: the fused hidden-state losses
(:mod:`torchkd.calls.hidden`) read the output projection's weight after the model's forward,
and find it whole -- gathered once per step, for the forward, and released after the backward
(FSDP2 reduce-scatters its gradient at the end of the backward even though the loss reached
it outside the model's forward). A tied embedding and output projection are one parameter of
that unit, so they stay one.

The blocks are found generically (:func:`transformer_blocks`): the modules whose class is
named in the model's ``_no_split_modules`` (what Hugging Face models declare as their
indivisible blocks), else the layers of ``model.get_decoder().layers`` or ``model.model.layers``
when it is a :class:`~torch.nn.ModuleList`. A model with neither (an MLP, a CNN) is sharded
at its root only, as before.
"""

from __future__ import annotations

from torch import nn

__all__ = ["shard_blocks", "transformer_blocks"]


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    get_decoder = getattr(model, "get_decoder", None)
    candidates = [get_decoder() if callable(get_decoder) else None, getattr(model, "model", None)]
    for body in candidates:
        layers = getattr(body, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    return []


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model`` to shard one by one (see the module docstring), in
    the order of ``model.modules()``; ``[]`` for a model without them.

    Example:
        >>> class Stack(nn.Module):
        ...     _no_split_modules = ["Linear"]
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layers = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2))
        >>> [type(block).__name__ for block in transformer_blocks(Stack())]
        ['Linear', 'Linear']
        >>> transformer_blocks(nn.Linear(2, 2))
        []
    """
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [
        module
        for module in model.modules()
        if module is not model and type(module).__name__ in names
    ]
    return blocks or _decoder_layers(model)


def shard_blocks(
    model: nn.Module, ignored_params: set[nn.Parameter], *, keep_root_gathered: bool
) -> nn.Module:
    """``fully_shard`` each of :func:`transformer_blocks` of ``model``, then ``model``.

    Args:
        model: the student or a teacher.
        ignored_params: parameters kept whole on every process (0-d ones: FSDP2 shards none).
        keep_root_gathered: keep the parameters outside the blocks gathered from the forward
            to the end of the backward (see the module docstring).

    Returns:
        ``model``, now an ``FSDPModule``.
    """
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(model):
        fully_shard(block, ignored_params=ignored_params)
    reshard = False if keep_root_gathered else None  # None: FSDP2's default
    return fully_shard(model, ignored_params=ignored_params, reshard_after_forward=reshard)
