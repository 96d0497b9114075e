r"""The chunked kernel behind :func:`torchkd.losses.fused_linear_kd_loss`.

Rows are processed ``chunk_size`` at a time. For each chunk the student's (and, from hidden
states, the teacher's) logits are written into one preallocated ``[chunk, V]`` buffer per side,
the divergence and its closed-form gradient w.r.t. the logits are computed in place (on a CPU
a block of a few rows at a time, :func:`block_rows`: the several elementwise passes over a
block then run in the processor's cache, and their work buffers are ``[block, V]``), and the
gradient is pushed through the output projection at once: ``grad_hidden[chunk] = G W``,
``grad_weight += G^T h``, ``grad_bias += sum_rows G``, accumulated in float32 (float64 for
float64 inputs). The backward pass only multiplies the stored gradients by the incoming scalar.

Per side the logits are ``y = c tanh(s z / c)`` with ``z = h W^T + b`` (scale ``s``, optional
softcap ``c``), softened as ``a = y / T``. The gradient w.r.t. ``z`` is

.. math::
    \frac{\partial \ell}{\partial z} = s \left(1 - \tanh^2\frac{s z}{c}\right)
    \left[\frac{\lambda}{T D} \frac{\partial \mathcal{D}}{\partial a}
    + \frac{w}{D} \left(\mathrm{softmax}(y) - \mathrm{onehot}\right)\right]

with :math:`\lambda` the :math:`T^2` factor, ``w`` the hard-label weight and ``D`` the
normalizer; the scalar factor rides on the matrix products (their ``alpha``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from torchkd.losses._divergence_steps import softmax_in_place
from torchkd.losses.divergence_table import DIVERGENCES
from torchkd.losses.kl import _graph_kept
from torchkd.losses.sampled import SampledRows, sampled_divergence


@dataclass(frozen=True)
class Side:
    """One side's output layer: selected hidden rows ``[n, H]``, weight ``[V, H]``, options."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    scale: float
    softcap: float | None


@dataclass(frozen=True)
class Plan:
    """Everything the kernel needs besides the tensors."""

    divergence: str  # a name with a chunked form in torchkd.losses.divergence_table
    parameter: float  # the entry's beta: JSD's beta, the skew KLs' lambda, AKL's mu
    temperature: float
    divergence_weight: float  # T^2, or 1 (no T^2, or TVD)
    hard_label_weight: float
    denominator: float
    chunk_size: int
    student_scale: float
    student_softcap: float | None
    teacher_scale: float
    teacher_softcap: float | None


class _Buffers:
    """Preallocated ``[chunk, V]`` work buffers, created on first use; views of the first rows."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape, self.dtype, self.device = (rows, vocab), dtype, device
        self.store: dict[str, Tensor] = {}

    def get(self, name: str, rows: int) -> Tensor:
        if name not in self.store:
            self.store[name] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self.store[name][:rows]


def _soften(
    out: Tensor, scale: float, softcap: float | None, temperature: float, derivative: Tensor | None
) -> None:
    """``out <- cap tanh(s out / cap) / T`` in place; ``derivative <- 1 - tanh^2`` if given."""
    if softcap is None:
        if scale / temperature != 1.0:
            out.mul_(scale / temperature)
        return
    out.mul_(scale / softcap).tanh_()
    if derivative is not None:
        torch.mul(out, out, out=derivative)
        derivative.neg_().add_(1.0)
    out.mul_(softcap / temperature)


def _project(out: Tensor, hidden: Tensor, side: Side) -> None:
    weight = side.weight.t()
    if side.bias is None:
        torch.mm(hidden, weight, out=out)
    else:
        torch.addmm(side.bias, hidden, weight, out=out)


def _dense_divergence(
    plan: Plan,
    student: Tensor,
    teacher: Tensor,
    buffers: _Buffers,
    teacher_grad: bool,
    masked: tuple[bool, bool],
) -> tuple[Tensor, Tensor | None]:
    """Rows of D(p_T, p_S); ``student`` <- dD/da_S; returns the buffer holding dD/da_T.

    On entry both buffers hold the softened logits. ``masked`` says whether the student's and
    the teacher's logits may hold ``-inf`` (vocabulary masking by a bias or given logits): their
    log-probabilities are then clamped to the dtype's lowest value, so that entries masked on
    both sides give ``0 log 0 = 0`` instead of ``-inf - (-inf)``. The divergence is the chunked
    form of :mod:`torchkd.losses.divergence_table`, in preallocated ``[chunk, V]`` buffers:
    forward and reverse KL use one more (two when the teacher needs its gradient too), JSD and
    TVD two more.
    """
    torch.log_softmax(student, dim=-1, out=student)
    torch.log_softmax(teacher, dim=-1, out=teacher)
    for side, side_masked in zip((student, teacher), masked, strict=True):
        if side_masked:
            side.clamp_(min=torch.finfo(side.dtype).min)
    chunked = DIVERGENCES[plan.divergence].chunked
    return chunked(student, teacher, buffers, plan.parameter, teacher_grad)


def _probability_divergence(plan: Plan, student: Tensor, teacher: Tensor, work: Tensor) -> Tensor:
    """Rows of a divergence with a normalizer form (forward KL, soft cross-entropy) from the
    softened logits ``a`` (``student``) and ``b`` (``teacher``); ``student`` <- ``p - q``.

    The rows are ``from_normalizers(sum q w, lse(a), lse(b))`` of
    :mod:`torchkd.losses.divergence_table` (forward KL: ``w = b - a``), each log-sum-exp taken
    from its softmax: two exponentials per entry where the log form takes four. Only for
    finite logits (no vocabulary masked) and no teacher gradient.
    """
    entry = DIVERGENCES[plan.divergence]
    cross = entry.cross_logits(student, teacher, work)
    teacher_lse = softmax_in_place(teacher)  # q
    cross = cross.mul_(teacher).sum(-1)
    student_lse = softmax_in_place(student)  # p
    student.sub_(teacher)
    return entry.from_normalizers(cross, student_lse, teacher_lse)


def _sparse_divergence(plan: Plan, student: Tensor, ids: Tensor, teacher_log: Tensor) -> Tensor:
    """Rows of the bucket divergence; ``student`` <- dD/da_S (see :mod:`torchkd.losses.topk`)."""
    torch.log_softmax(student, dim=-1, out=student)
    kept_log = student.gather(1, ids)
    student.exp_().scatter_(1, ids, 0.0)  # p outside the kept ids
    tail = student.sum(-1)
    if ids.shape[1] < student.shape[1]:  # k = V: the tail is empty, its mass exactly 0
        tail = tail.clamp_min(torch.finfo(student.dtype).tiny)
    student_log = torch.cat([kept_log, tail.log().unsqueeze(-1)], dim=-1)
    buckets = DIVERGENCES[plan.divergence].buckets
    rows, kept, tail_coefficient = buckets(teacher_log, student_log, plan.parameter)
    student.mul_(tail_coefficient.unsqueeze(-1)).scatter_(1, ids, kept)
    return rows


def _hard_labels(work: Tensor, softened: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """CE rows of ``y = T a`` (the unsoftened logits); ``work`` <- softmax(y) - onehot."""
    torch.mul(softened, temperature, out=work)
    torch.log_softmax(work, dim=-1, out=work)
    rows = -work.gather(1, labels.unsqueeze(-1)).squeeze(-1)
    work.exp_().scatter_add_(1, labels.unsqueeze(-1), torch.full_like(rows, -1.0).unsqueeze(-1))
    return rows


def _backpropagate(
    gradient: Tensor,
    scale: float,
    side: Side,
    hidden: Tensor,
    start: int,
    grads: dict[str, Tensor],
    prefix: str,
) -> None:
    """Push ``scale * gradient`` (w.r.t. the chunk's logits ``h W^T + b``) into the inputs.

    The scale rides on the matrix products (``alpha``), saving a pass over the chunk.
    """
    if f"{prefix}_hidden" in grads:
        rows = grads[f"{prefix}_hidden"][start : start + hidden.shape[0]]
        torch.addmm(rows, gradient, side.weight, beta=0.0, alpha=scale, out=rows)
    if f"{prefix}_weight" in grads:
        grads[f"{prefix}_weight"].addmm_(gradient.t(), hidden, alpha=scale)
    if f"{prefix}_bias" in grads:
        grads[f"{prefix}_bias"].add_(gradient.sum(0), alpha=scale)


def _masks_vocabulary(side: Side) -> bool:
    """Whether the side's bias masks vocabulary entries with ``-inf``."""
    return side.bias is not None and bool(torch.isneginf(side.bias).any())


def _gradient_buffers(student: Side, teacher: Side | None, wanted: set[str]) -> dict[str, Tensor]:
    """Zeroed gradient accumulators in the compute dtype for the ``wanted`` inputs."""
    grads = {}
    for prefix, side in (("student", student), ("teacher", teacher)):
        if side is None:
            continue
        shapes = {
            "hidden": side.hidden.shape,
            "weight": side.weight.shape,
            "bias": side.weight.shape[:1],
        }
        for part, shape in shapes.items():
            if f"{prefix}_{part}" in wanted:
                grads[f"{prefix}_{part}"] = side.weight.new_zeros(shape)
    return grads


def run(
    plan: Plan,
    student: Side,
    teacher: Side | tuple[Tensor, Tensor | None] | None,
    sparse: tuple[Tensor, Tensor] | SampledRows | None,
    labels: Tensor | None,
    wanted: set[str],
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss (0-dim, compute dtype) and the gradients of the ``wanted`` inputs.

    The teacher is a :class:`Side`, or dense logits as ``(all rows [N, V'], index of the
    selected rows or None)`` (rows are gathered a block at a time, never copied whole), or None
    with ``sparse`` = (token ids ``[n, k]``, bucket log-masses ``[n, k + 1]``) of a top-k
    teacher, or the :class:`~torchkd.losses.sampled.SampledRows` of a sampled one. ``wanted``
    names inputs as ``"student_hidden"``, ``"teacher_weight"``, ...; the weights must already
    be in the compute dtype.
    """
    projected = teacher if isinstance(teacher, Side) else None
    dtype, device = student.weight.dtype, student.weight.device
    rows_total, vocab = student.hidden.shape[0], student.weight.shape[0]
    grads = _gradient_buffers(student, projected, wanted)
    chunk = max(1, min(plan.chunk_size, rows_total))
    block = _Block(
        plan,
        _Buffers(min(chunk, block_rows(vocab, device)), vocab, dtype, device),
        None if projected is not None else teacher,
        sparse,
        labels,
        student_grad=any(key.startswith("student_") for key in grads),
        teacher_grad=any(key.startswith("teacher_") for key in grads),
        masked=(
            _masks_vocabulary(student),
            isinstance(teacher, tuple) or (projected is not None and _masks_vocabulary(projected)),
        ),
    )
    logits = _Buffers(chunk, vocab, dtype, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    factor = plan.divergence_weight / (plan.temperature * plan.denominator)
    for start in range(0, rows_total, chunk):
        stop = min(start + chunk, rows_total)
        hidden = student.hidden[start:stop].to(dtype)
        student_logits = logits.get("student", stop - start)
        _project(student_logits, hidden, student)
        teacher_hidden = teacher_logits = None
        if projected is not None:
            teacher_hidden = projected.hidden[start:stop].to(dtype)
            teacher_logits = logits.get("teacher", stop - start)
            _project(teacher_logits, teacher_hidden, projected)
        step = block.buffers.shape[0]
        for first in range(0, stop - start, step):
            last = min(first + step, stop - start)
            teacher_block = None if teacher_logits is None else teacher_logits[first:last]
            total += block(student_logits[first:last], teacher_block, start + first, start + last)
        if block.student_grad:
            scale = factor * plan.student_scale
            _backpropagate(student_logits, scale, student, hidden, start, grads, "student")
        if block.teacher_grad and projected is not None:
            scale = factor * plan.teacher_scale
            _backpropagate(
                teacher_logits, scale, projected, teacher_hidden, start, grads, "teacher"
            )
    return (total / plan.denominator).to(dtype), grads


def block_rows(vocab: int, device: torch.device) -> int:
    """Rows per block of the elementwise work. On a CPU, ``[rows, V]`` buffers of about
    :data:`BLOCK_ELEMENTS` entries, so that the several passes over a block (softmax, the
    divergence, its gradient) run in the processor's cache rather than in main memory; on an
    accelerator, whose kernels are launched one by one, the whole chunk (no limit)."""
    if device.type != "cpu":
        return 2**62
    return max(1, BLOCK_ELEMENTS // max(vocab, 1))


BLOCK_ELEMENTS = 2**20  # 4 MiB per float32 block buffer: a few of them fit a CPU's L2 / L3


@dataclass
class _Block:
    r"""The elementwise work on a block of rows of the projected logits, done in place.

    Called with the student's block (and the projected teacher's, or None) holding the raw
    logits ``h W^T + b`` of rows ``[start, stop)``; afterwards the student's block holds the
    gradient w.r.t. them, and the teacher's too when ``teacher_grad``, both up to the factor
    :math:`\lambda / (T D)` the matrix products apply. Returns the block's summed loss
    (the divergence rows times :math:`\lambda` plus the weighted hard-label cross-entropy) in
    float64. ``teacher_logits``: the given teacher logits (all rows, row index or None), when
    the teacher is not projected; ``masked``: as for :func:`_dense_divergence`.
    """

    plan: Plan
    buffers: _Buffers
    teacher_logits: tuple[Tensor, Tensor | None] | None
    sparse: tuple[Tensor, Tensor] | SampledRows | None
    labels: Tensor | None
    student_grad: bool
    teacher_grad: bool
    masked: tuple[bool, bool]

    @property
    def probability_form(self) -> bool:
        """Whether the dense divergence takes :func:`_probability_divergence`."""
        has_form = DIVERGENCES[self.plan.divergence].from_normalizers is not None
        return has_form and not self.teacher_grad and not any(self.masked)

    def __call__(self, student: Tensor, teacher: Tensor | None, start: int, stop: int) -> Tensor:
        plan, buffers, n = self.plan, self.buffers, stop - start
        temperature = plan.temperature
        student_derivative = None
        if self.student_grad and plan.student_softcap is not None:
            student_derivative = buffers.get("student_derivative", n)
        _soften(student, plan.student_scale, plan.student_softcap, temperature, student_derivative)
        hard = hard_gradient = None
        if plan.hard_label_weight > 0:
            hard_gradient = buffers.get("hard", n)
            hard = _hard_labels(hard_gradient, student, self.labels[start:stop], temperature)
        teacher_derivative = teacher_gradient = None
        if isinstance(self.sparse, SampledRows):
            rows = sampled_divergence(student, self.sparse.rows(start, stop))
        elif self.sparse is not None:
            ids, log_masses = self.sparse
            rows = _sparse_divergence(plan, student, ids[start:stop], log_masses[start:stop])
        else:
            if teacher is not None:
                if self.teacher_grad and plan.teacher_softcap is not None:
                    teacher_derivative = buffers.get("teacher_derivative", n)
                _soften(
                    teacher,
                    plan.teacher_scale,
                    plan.teacher_softcap,
                    temperature,
                    teacher_derivative,
                )
            else:
                teacher = self._given_teacher(start, stop)
            if self.probability_form:
                rows = _probability_divergence(plan, student, teacher, buffers.get("work", n))
            else:
                rows, teacher_gradient = _dense_divergence(
                    plan, student, teacher, buffers, self.teacher_grad, self.masked
                )
        row_sum = rows.sum() * plan.divergence_weight
        if hard is not None:
            row_sum = row_sum + hard.sum() * plan.hard_label_weight
        if self.student_grad:
            if hard_gradient is not None:  # fold the hard-label gradient in: w / D over the factor
                factor = plan.divergence_weight / (temperature * plan.denominator)
                student.add_(
                    hard_gradient, alpha=plan.hard_label_weight / plan.denominator / factor
                )
            if student_derivative is not None:
                student.mul_(student_derivative)
        if teacher_gradient is not None:
            if teacher_gradient.data_ptr() != teacher.data_ptr():
                teacher.copy_(teacher_gradient)
            if teacher_derivative is not None:
                teacher.mul_(teacher_derivative)
        return row_sum.double()

    def _given_teacher(self, start: int, stop: int) -> Tensor:
        """The given teacher logits of rows ``[start, stop)``, softened, in a block buffer."""
        logits, row_index = self.teacher_logits
        vocab = self.buffers.shape[1]
        block = self.buffers.get("teacher", stop - start)
        if row_index is None:
            block.copy_(logits[start:stop, :vocab])
        else:
            block.copy_(logits.index_select(0, row_index[start:stop])[:, :vocab])
        if self.plan.temperature != 1.0:
            block.div_(self.plan.temperature)
        return block


INPUT_NAMES = (
    "student_hidden",
    "student_weight",
    "student_bias",
    "teacher_hidden",
    "teacher_weight",
    "teacher_bias",
)


class FusedLinearFunction(torch.autograd.Function):
    """Loss from hidden states whose backward only scales the gradients the forward stored.

    ``compute(wanted)`` runs the kernel and returns the loss, the gradients (keyed by
    :data:`INPUT_NAMES`) and ``finish(name, gradient)``, which gives a scaled gradient its
    input's shape and dtype (rows left out by the mask, vocabulary rows left out by truncation).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        student_hidden: Tensor,
        student_weight: Tensor,
        student_bias: Tensor | None,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_bias: Tensor | None,
        compute: Callable[[set[str]], tuple[Tensor, dict[str, Tensor], Callable]],
    ) -> Tensor:
        wanted = {
            name for name, need in zip(INPUT_NAMES, ctx.needs_input_grad, strict=False) if need
        }
        loss, grads, finish = compute(wanted)
        ctx.grads, ctx.finish = grads, finish
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        kept = _graph_kept()
        grads = ctx.grads
        if not kept:
            ctx.grads = None  # let autograd take the buffers without a copy
        result: list[Tensor | None] = []
        for name in INPUT_NAMES:
            gradient = grads.get(name)
            if gradient is None:
                result.append(None)
                continue
            scaled = gradient * grad_output if kept else gradient.mul_(grad_output)
            result.append(ctx.finish(name, scaled))
        grads = None
        return (*result, None)


def fused_loss(
    inputs: Sequence[Tensor | None],
    compute: Callable[[set[str]], tuple[Tensor, dict[str, Tensor], Callable]],
) -> Tensor:
    """The loss of ``compute`` on the six :data:`INPUT_NAMES` ``inputs``: through
    :class:`FusedLinearFunction` when gradients are enabled and an input requires one, else
    the value alone (no gradient computed)."""
    needs = any(t is not None and t.requires_grad for t in inputs)
    if not (torch.is_grad_enabled() and needs):
        return compute(set())[0]
    return FusedLinearFunction.apply(*inputs, compute)
