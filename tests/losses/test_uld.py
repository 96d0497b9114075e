"""ULD across vocabularies of different sizes: the dense and fused forms against the float64
brute-force reference (values and gradcheck), fused == dense, chunk sizes, masked rows, and
the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from torchkd.losses import FusedLinearULDLoss, ULDLoss, fused_linear_uld_loss, uld_loss

from .uld_reference import fused_linear_uld_reference, uld_reference

ROWS, STUDENT_H, TEACHER_H = (3, 4), 6, 7
# (V_S, V_T): a smaller, a larger and an equal student vocabulary
VOCABULARIES = [(5, 9), (9, 5), (6, 6)]


def inputs(vocab_s: int, vocab_t: int, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * 1.5

    labels = torch.randint(0, vocab_s, ROWS, generator=generator)
    labels[0, 1] = labels[2, 3] = -100
    return {
        "student_hidden": randn(*ROWS, STUDENT_H),
        "student_weight": randn(vocab_s, STUDENT_H),
        "teacher_hidden": randn(*ROWS, TEACHER_H),
        "teacher_weight": randn(vocab_t, TEACHER_H),
        "student_bias": randn(vocab_s),
        "teacher_bias": randn(vocab_t),
        "labels": labels,
    }


def logits(x: dict[str, Tensor], side: str) -> Tensor:
    return x[f"{side}_hidden"] @ x[f"{side}_weight"].T + x[f"{side}_bias"]


def numpy(tensor: Tensor):
    return tensor.detach().numpy()


@pytest.mark.parametrize(("vocab_s", "vocab_t"), VOCABULARIES)
@pytest.mark.parametrize("options", [{}, {"temperature": 2.5, "hard_label_weight": 0.7}])
def test_dense_matches_reference_and_gradcheck(vocab_s: int, vocab_t: int, options: dict) -> None:
    x = inputs(vocab_s, vocab_t)
    student, teacher = logits(x, "student"), logits(x, "teacher")
    expected = uld_reference(numpy(student), numpy(teacher), x["labels"].numpy(), **options)
    value = uld_loss(student, teacher, x["labels"], **options)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    assert expected > 0

    def function(s: Tensor, t: Tensor) -> Tensor:
        return uld_loss(s, t, x["labels"], **options)

    both = (student.detach().requires_grad_(), teacher.detach().requires_grad_())
    assert torch.autograd.gradcheck(function, both)


@pytest.mark.parametrize(("vocab_s", "vocab_t"), VOCABULARIES)
def test_fused_matches_reference_and_gradcheck(vocab_s: int, vocab_t: int) -> None:
    x = inputs(vocab_s, vocab_t)
    options = {"temperature": 1.5, "hard_label_weight": 0.3, "chunk_size": 5}
    sides = [x[k] for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")]
    expected = fused_linear_uld_reference(*map(numpy, sides), x["labels"].numpy(), **options)
    value = fused_linear_uld_loss(*sides, x["labels"], **options)
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))

    def function(*tensors: Tensor) -> Tensor:
        *four, student_bias, teacher_bias = tensors
        return fused_linear_uld_loss(
            *four, x["labels"], student_bias=student_bias, teacher_bias=teacher_bias, **options
        )

    tensors = [*sides, x["student_bias"], x["teacher_bias"]]
    assert torch.autograd.gradcheck(function, [t.clone().requires_grad_() for t in tensors])


def gradients(value: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(value, tensors))


@pytest.mark.parametrize(("vocab_s", "vocab_t"), VOCABULARIES)
@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 2.0},
        {"hard_label_weight": 1.0, "num_items_in_batch": 17},
        {"reduction": "sum", "student_logit_scale": 0.5, "teacher_softcap": 2.0},
    ],
)
def test_fused_equals_dense_on_values_and_gradients(
    vocab_s: int, vocab_t: int, options: dict
) -> None:
    x = {
        k: v.clone().requires_grad_(v.is_floating_point())
        for k, v in inputs(vocab_s, vocab_t).items()
    }
    tensors = [x[k] for k in x if k != "labels"]
    fused = fused_linear_uld_loss(
        x["student_hidden"],
        x["student_weight"],
        x["teacher_hidden"],
        x["teacher_weight"],
        x["labels"],
        student_bias=x["student_bias"],
        teacher_bias=x["teacher_bias"],
        chunk_size=4,
        **options,
    )
    scale = options.pop("student_logit_scale", 1.0)
    cap = options.pop("teacher_softcap", None)
    teacher = logits(x, "teacher")
    teacher = teacher if cap is None else cap * torch.tanh(teacher / cap)
    dense = uld_loss(logits(x, "student") * scale, teacher, x["labels"], **options)
    torch.testing.assert_close(fused, dense, rtol=1e-12, atol=1e-14)
    for got, expected in zip(gradients(fused, tensors), gradients(dense, tensors), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_chunk_sizes_give_the_same_result() -> None:
    x = inputs(7, 11)
    sides = [x[k].clone().requires_grad_() for k in ("student_hidden", "student_weight")]
    teacher = [x["teacher_hidden"], x["teacher_weight"]]
    results = []
    for chunk_size in (1, 3, 10, 12, 1000, None):
        value = fused_linear_uld_loss(*sides, *teacher, x["labels"], chunk_size=chunk_size)
        results.append((value, gradients(value, sides)))
    for value, grads in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-13, atol=1e-15)
        for got, expected in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fused", [False, True], ids=["dense", "fused"])
def test_masked_and_ignored_rows_are_left_out(fused: bool) -> None:
    x = inputs(5, 8)
    keep = torch.tensor([[True, True, False, True], [False] * 4, [True, False, True, True]])
    kept = keep & (x["labels"] != -100)
    poisoned = {
        k: v.masked_fill(~keep.unsqueeze(-1), float("nan")).requires_grad_()
        for k, v in x.items()
        if k.endswith("hidden")
    }
    weights = [x["student_weight"], x["teacher_weight"]]
    if fused:
        value = fused_linear_uld_loss(
            poisoned["student_hidden"], weights[0], poisoned["teacher_hidden"], weights[1],
            x["labels"], mask=keep, hard_label_weight=0.5, chunk_size=2,
        )  # fmt: skip
    else:
        value = uld_loss(
            poisoned["student_hidden"] @ weights[0].T,
            poisoned["teacher_hidden"] @ weights[1].T,
            x["labels"],
            mask=keep,
            hard_label_weight=0.5,
        )
    expected = uld_reference(
        numpy(x["student_hidden"][kept] @ weights[0].T),
        numpy(x["teacher_hidden"][kept] @ weights[1].T),
        x["labels"][kept].numpy(),
        hard_label_weight=0.5,
    )
    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64))
    value.backward()
    for hidden in poisoned.values():
        assert torch.isfinite(hidden.grad).all()
        assert (hidden.grad[~kept] == 0).all() and (hidden.grad[kept] != 0).any()


def test_equal_sorted_distributions_over_different_vocabularies_give_zero() -> None:
    """Zero up to rounding: the softmax normalizers are summed over different entries."""
    student = torch.tensor([[1.0, 3.0, -2.0]])
    teacher = torch.tensor([[-2.0, float("-inf"), 3.0, 1.0, float("-inf")]])
    assert uld_loss(student, teacher, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert uld_loss(teacher, student, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_gradient_reaches_the_entry_sorted_to_each_position() -> None:
    """One row, equal vocabularies: d ULD / dp_j = sign(p_j - q_(rank of j)) (through the
    sort), then the softmax Jacobian."""
    student = torch.tensor([[0.2, 1.5, -0.7, 0.9]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[2.0, -1.0, 0.0, 0.5]], dtype=torch.float64)
    uld_loss(student, teacher).backward()
    p = torch.softmax(student.detach()[0], 0)
    q_sorted = torch.softmax(teacher[0], 0).sort(descending=True).values
    rank = p.argsort(descending=True).argsort()
    d_p = torch.sign(p - q_sorted[rank])
    expected = p * (d_p - (p * d_p).sum())
    torch.testing.assert_close(student.grad[0], expected)


def test_modules_store_options_and_take_the_call_temperature() -> None:
    x = inputs(5, 9)
    student, teacher = logits(x, "student"), logits(x, "teacher")
    dense = ULDLoss(temperature=2.0, hard_label_weight=0.5)
    assert dense(student, teacher, x["labels"], temperature=3.0) == uld_loss(
        student, teacher, x["labels"], temperature=3.0, hard_label_weight=0.5
    )
    fused = FusedLinearULDLoss(temperature=2.0, chunk_size=3)
    sides = [x[k] for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")]
    assert fused(*sides, temperature=1.5, student_softcap=4.0) == fused_linear_uld_loss(
        *sides, temperature=1.5, student_softcap=4.0, chunk_size=3
    )
    with pytest.raises(TypeError, match="FusedLinearULDLoss"):
        FusedLinearULDLoss(divergence="jsd")


def test_errors_name_the_problem() -> None:
    x = inputs(5, 9)
    student, teacher = logits(x, "student"), logits(x, "teacher")
    sides = [x[k] for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")]
    with pytest.raises(ValueError, match="same rows"):
        uld_loss(student, teacher[:2])
    with pytest.raises(ValueError, match="needs labels"):
        uld_loss(student, teacher, hard_label_weight=1.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        uld_loss(student, teacher, torch.full(ROWS, 7))  # a teacher id, beyond the student's
    with pytest.raises(ValueError, match="reduction"):
        uld_loss(student, teacher, reduction="mean")
    with pytest.raises(TypeError, match="temperature"):
        uld_loss(student, teacher, temperature=torch.tensor(2.0))
    with pytest.raises(ValueError, match="not both"):
        fused_linear_uld_loss(*sides, teacher_logits=teacher)
    with pytest.raises(ValueError, match="same tokens"):
        fused_linear_uld_loss(*sides[:2], sides[2][:2], sides[3])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_linear_uld_loss(*sides, chunk_size=0)
    with pytest.raises(ValueError, match="teacher_softcap"):
        fused_linear_uld_loss(*sides, teacher_softcap=-1.0)
    with pytest.raises(ValueError, match="teacher_bias"):
        fused_linear_uld_loss(*sides, teacher_bias=x["student_bias"])


def test_logits_beyond_float32_are_redone_in_float64() -> None:
    """A student whose logits (fused: h W^T; dense: z / T) overflow float32 next to an ordinary
    teacher: ULD = 2 (1 - q_(1)), the float64 value."""
    x = inputs(5, 9)
    sides = [x[k] for k in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight")]
    huge = [sides[0] * 1e19, sides[1] * 1e19, *sides[2:]]
    wide = fused_linear_uld_loss(*huge, temperature=0.5)
    q = torch.softmax((logits(x, "teacher") - x["teacher_bias"]) / 0.5, dim=-1).amax(dim=-1)
    torch.testing.assert_close(wide, 2 * (1 - q).mean())
    narrow = [t.float().requires_grad_() for t in huge]
    value = fused_linear_uld_loss(*narrow, temperature=0.5)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), wide, rtol=1e-6, atol=1e-6)
    value.backward()
    assert all(torch.isfinite(t.grad).all() for t in narrow)

    student = logits(x, "student")
    student = student * (3e38 / student.abs().max())  # finite in float32, z / T is not
    teacher = logits(x, "teacher")
    dense = uld_loss(student.float(), teacher.float(), temperature=0.5)
    torch.testing.assert_close(dense.double(), uld_loss(student, teacher, temperature=0.5))


def test_the_fused_form_saves_no_token_by_vocabulary_tensor() -> None:
    """Every tensor autograd saves (the per-chunk graphs included) is smaller than one side's
    [N, V] logits: at most [chunk, V] or an output weight."""
    generator = torch.Generator().manual_seed(0)
    rows, vocab_s, vocab_t, chunk = 64, 50, 70, 4
    sides = [
        torch.randn(rows, 8, generator=generator, requires_grad=True),
        torch.randn(vocab_s, 8, generator=generator, requires_grad=True),
        torch.randn(rows, 8, generator=generator, requires_grad=True),
        torch.randn(vocab_t, 8, generator=generator, requires_grad=True),
    ]
    labels = torch.randint(0, vocab_s, (rows,), generator=generator)
    sizes: list[int] = []

    def pack(tensor: Tensor) -> Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        value = fused_linear_uld_loss(*sides, labels, hard_label_weight=1.0, chunk_size=chunk)
    value.backward()
    assert sizes and max(sizes) <= max(chunk * vocab_t, vocab_t * 8) < rows * vocab_s
