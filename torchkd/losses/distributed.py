"""Rows of every process: the global batch of a ``torch.distributed`` run, for losses.

A loss is pure math on the tensors it is given; under ``torchrun`` each process holds its
share of the global batch. Losses that keep state across batches (CRD's memory banks) or couple
the samples of a batch (relation and in-batch contrastive losses) gather the rows of every
process with these helpers. Without an initialized process group, or with one process, both
return their input unchanged, so single-process code pays nothing.

Rows are concatenated in rank order along dim 0; processes may hold different numbers of rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["data_parallel_num_items", "gather_rows", "gather_rows_with_grad", "world_size"]


def world_size() -> int:
    """Processes in the default group (1 without one).

    Example:
        >>> world_size()
        1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _row_counts(rows: int, device: torch.device) -> list[int]:
    counts = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(rows, device=device))
    return [int(count) for count in counts]


def _gather(tensor: Tensor) -> tuple[Tensor, list[int]]:
    if tensor.dim() == 0:
        raise ValueError("gather_rows needs a tensor with a batch dimension, got a scalar")
    tensor = tensor.contiguous()
    counts = _row_counts(tensor.shape[0], tensor.device)
    longest = max(counts)
    padded = tensor
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)]), counts


@torch.no_grad()
def gather_rows(tensor: Tensor) -> Tensor:
    """Every process's rows of ``tensor`` (``[B_r, ...]``), concatenated: ``[sum B_r, ...]``.

    No gradient flows through the result (use :func:`gather_rows_with_grad`).

    Example:
        >>> gather_rows(torch.arange(3)).tolist()  # one process: unchanged
        [0, 1, 2]
    """
    if world_size() == 1:
        return tensor
    return _gather(tensor)[0]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        gathered, counts = _gather(tensor)
        ctx.rows = slice(sum(counts[: dist.get_rank()]), sum(counts[: dist.get_rank() + 1]))
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every process's loss may depend on these rows
        return grad[ctx.rows]


def gather_rows_with_grad(tensor: Tensor) -> Tensor:
    """:func:`gather_rows` that gradients flow through.

    Every process computes its loss on the gathered rows; the backward pass adds the
    gradients all processes' losses send to each row, so this process's rows get
    :math:`\\sum_k \\partial \\mathcal{L}_k / \\partial x_r`. Averaged by DDP over the
    :math:`W` processes, a loss of the global batch that every process computes alike gets
    exactly the gradient of one process holding the whole batch.

    Example:
        >>> rows = torch.ones(2, 3, requires_grad=True)
        >>> gather_rows_with_grad(rows).sum().backward(); rows.grad.tolist()[0]
        [1.0, 1.0, 1.0]
    """
    if world_size() == 1:
        return tensor
    return _GatherRows.apply(tensor)


def data_parallel_num_items(local_count: int | Tensor) -> Tensor:
    r"""``num_items_in_batch`` for a token loss on this process's share of a data-parallel batch.

    A token loss normalized by each process's own valid-token count weights the tokens of a
    process with few of them more. Normalize instead by the global count ``N`` (the valid
    tokens of every process, summed): DDP and FSDP then average the processes' gradients, so
    each process divides by ``N / W`` and the average is the gradient of the global batch:

    .. math::
        \frac{1}{W} \sum_{r=1}^{W} \nabla \frac{S_r}{N / W} = \nabla \frac{\sum_r S_r}{N}

    with :math:`S_r` the summed loss of process :math:`r`'s tokens. Pass the result as
    ``num_items_in_batch`` (e.g. to :func:`~torchkd.losses.fused_linear_kd_loss`); under gradient
    accumulation, count the valid tokens of all the step's micro-batches. One process: the
    count itself.

    Example:
        >>> data_parallel_num_items(12).item()
        12.0
    """
    count = torch.as_tensor(local_count, dtype=torch.float64).clone()  # exact up to 2**53
    if world_size() > 1:
        dist.all_reduce(count)
    return count / world_size()
