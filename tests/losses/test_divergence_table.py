"""The table of divergences (``torchkd.losses.divergence_table``) and the hyperparameter base of
the loss modules (``torchkd.losses._module``).

Every form of an entry must agree with its dense form (and the dense gradients with autograd
through the dense rows); names a kernel cannot do are refused naming the argument.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor

from torchkd.losses import FusedLinearKDLoss, KDLoss, fused_linear_kd_loss, kl, tvd_loss
from torchkd.losses._module import HyperparameterModule
from torchkd.losses.divergence_table import DIVERGENCES, NAMES, lookup, names

BETA = 0.3


def log_probs(*shape: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=generator, dtype=torch.float64), -1)


class Buffers:
    def __init__(self) -> None:
        self.store: dict[str, Tensor] = {}

    def get(self, name: str, rows: int) -> Tensor:
        return self.store.setdefault(name, torch.empty(rows, 9, dtype=torch.float64))[:rows]


@pytest.mark.parametrize("name", NAMES)
def test_dense_gradients_are_those_of_autograd_through_the_rows(name: str) -> None:
    """The closed forms (fast and safe) against autograd of the rows w.r.t. softened logits."""
    student = log_probs(4, 9, seed=0).requires_grad_()
    teacher = log_probs(4, 9, seed=1).requires_grad_()
    entry = DIVERGENCES[name]
    options = {"student_grad": False, "teacher_grad": False}
    rows = entry.dense(
        torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), BETA, safe=True, **options
    )[0]
    want = torch.autograd.grad(rows.sum(), (student, teacher))
    for safe in (False, True):
        both = {"student_grad": True, "teacher_grad": True}
        _, *got = entry.dense(student.detach(), teacher.detach(), BETA, safe=safe, **both)
        for got_gradient, want_gradient in zip(got, want, strict=True):
            torch.testing.assert_close(got_gradient, want_gradient, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", names("chunked"))
def test_chunked_form_equals_the_dense_form(name: str) -> None:
    student, teacher = log_probs(4, 9, seed=2), log_probs(4, 9, seed=3)
    entry = DIVERGENCES[name]
    want = entry.dense(student, teacher, BETA, safe=True, student_grad=True, teacher_grad=True)
    student_buffer, teacher_buffer = student.clone(), teacher.clone()
    rows, teacher_gradient = entry.chunked(student_buffer, teacher_buffer, Buffers(), BETA, True)
    for got, expected in zip((rows, student_buffer, teacher_gradient), want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", names("buckets"))
def test_bucket_form_of_singleton_buckets_equals_the_dense_form(name: str) -> None:
    """With every token kept (k = V) and an empty tail, the buckets are the distribution."""
    student, teacher = log_probs(4, 9, seed=4), log_probs(4, 9, seed=5)
    empty = torch.full((4, 1), float("-inf"), dtype=torch.float64)
    rows, kept, _ = DIVERGENCES[name].buckets(
        torch.cat([teacher, empty], -1), torch.cat([student, empty], -1), BETA
    )
    want = DIVERGENCES[name].dense(
        student, teacher, BETA, safe=True, student_grad=True, teacher_grad=False
    )
    torch.testing.assert_close(rows, want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kept, want[1], rtol=1e-10, atol=1e-12)


def test_names_a_kernel_cannot_do_are_refused_naming_the_argument() -> None:
    assert names("dense") == NAMES
    assert "soft_ce" not in names("chunked")
    with pytest.raises(ValueError, match="divergence must be one of"):
        lookup("soft_ce", "chunked")
    with pytest.raises(ValueError, match="kind must be one of"):
        kl.divergence_rows("hellinger", torch.zeros(2, 3), torch.zeros(2, 3), 1.0)
    hidden, weight = torch.randn(2, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="divergence must be one of"):
        fused_linear_kd_loss(hidden, weight, hidden, weight, divergence="soft_ce")


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_tvd_through_the_kernel_has_the_formula_and_its_gradient(temperature: float) -> None:
    generator = torch.Generator().manual_seed(6)
    student = torch.randn(5, 7, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(5, 7, generator=generator, dtype=torch.float64).requires_grad_()
    value = tvd_loss(student, teacher, temperature=temperature, reduction="sum")
    softened = (torch.softmax(x / temperature, -1) for x in (teacher, student))
    expected = 0.5 * (next(softened) - next(softened)).abs().sum()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(value, (student, teacher))
    want = torch.autograd.grad(expected, (student, teacher))
    for got_gradient, want_gradient in zip(got, want, strict=True):
        torch.testing.assert_close(got_gradient, want_gradient, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- hyperparameters


def test_stored_hyperparameters_and_per_call_overrides() -> None:
    loss = KDLoss(temperature=4.0)
    assert loss.hyperparameters() == {
        "temperature": 4.0,
        "standardize": False,
        "reduction": "batchmean",
    }
    assert loss.hyperparameters(temperature=2.0)["temperature"] == 2.0
    assert loss.hyperparameters(temperature=None)["temperature"] == 4.0
    loss.temperature = 3.0  # a schedule assigning the attribute
    assert loss.hyperparameters()["temperature"] == 3.0
    with pytest.raises(TypeError, match="no hyperparameter 'alpha'"):
        loss.hyperparameters(alpha=1.0)


def test_a_parameter_hyperparameter_is_registered_as_by_assignment() -> None:
    class Learned(HyperparameterModule):
        def __init__(self) -> None:
            super().__init__()
            self.store(temperature=torch.nn.Parameter(torch.tensor(2.0)))

    assert list(Learned().state_dict()) == ["temperature"]


def test_fused_module_options_are_the_functionals() -> None:
    parameters = inspect.signature(FusedLinearKDLoss).parameters
    functional = inspect.signature(fused_linear_kd_loss).parameters
    assert list(parameters)[:3] == ["divergence", "beta", "temperature"]
    assert all(parameters[name].default == functional[name].default for name in parameters)
    positional = FusedLinearKDLoss("jsd", 0.2)
    assert positional.hyperparameters()["beta"] == 0.2
    assert repr(positional) == repr(FusedLinearKDLoss(divergence="jsd", beta=0.2))
    with pytest.raises(TypeError, match=r"FusedLinearKDLoss: .*'mask'"):
        FusedLinearKDLoss(mask=None)
