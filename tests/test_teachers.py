"""torchkd.teachers: frozen teachers that stay in eval mode, teacher lists, logits selection
from every output form, and the weighted ensemble."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from torchkd.forward import call_model, select_logits
from torchkd.teachers import TeacherEnsemble, TeacherList, as_teacher_list, teacher_outputs


def test_teachers_are_frozen_and_stay_in_eval_mode() -> None:
    teacher = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    holder = nn.Module()
    holder.teachers = TeacherList([teacher])
    holder.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    before = teacher[2].running_mean.clone()
    teacher_outputs(holder.teachers, torch.randn(8, 3))
    assert torch.equal(teacher[2].running_mean, before)  # no BatchNorm statistics updated


def test_as_teacher_list_forms() -> None:
    one, two = nn.Linear(2, 2), nn.Linear(2, 2)
    assert len(as_teacher_list(None)) == 0
    assert len(as_teacher_list(one)) == 1
    assert len(as_teacher_list([one, two])) == 2
    assert len(as_teacher_list(nn.ModuleList([one, two]))) == 2
    assert len(as_teacher_list(nn.Sequential(one, two))) == 1  # a network, not a list
    with pytest.raises(TypeError, match=r"teachers\[1\] must be an nn.Module"):
        as_teacher_list([one, "teacher.pt"])


def test_teacher_outputs_carry_no_graph() -> None:
    (output,) = teacher_outputs([nn.Linear(3, 2)], torch.randn(4, 3, requires_grad=True))
    assert output.grad_fn is None


def test_call_model_passes_mappings_as_keywords() -> None:
    class Named(nn.Module):
        def forward(self, input_ids: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return input_ids * scale

    assert call_model(Named(), {"input_ids": torch.ones(2), "scale": 3.0}).tolist() == [3.0, 3.0]


class Output:
    def __init__(self, scores: torch.Tensor) -> None:
        self.scores = scores


@pytest.mark.parametrize(
    ("output", "key"),
    [
        ("tensor", None),
        ("tuple", None),
        ("tuple", 1),
        ("mapping", None),
        ("mapping", "scores"),
        ("object", "scores"),
    ],
)
def test_select_logits_every_output_form(output: str, key: str | int | None) -> None:
    logits, other = torch.randn(2, 3), torch.randn(2, 3)
    forms = {
        "tensor": logits,
        "tuple": (logits, other) if key is None else (other, logits),
        "mapping": OrderedDict([("logits" if key is None else key, logits), ("hidden", other)]),
        "object": Output(logits),
    }
    assert select_logits(forms[output], key) is logits


def test_select_logits_errors_say_what_the_output_holds() -> None:
    with pytest.raises(KeyError, match=r"no key 'logits' \(keys: \['scores'\]\); set output_key"):
        select_logits({"scores": torch.zeros(1)})
    with pytest.raises(KeyError, match="does not index the model's tuple output of length 1"):
        select_logits((torch.zeros(1),), 3)
    with pytest.raises(TypeError, match="must be a tensor, got NoneType"):
        select_logits({"logits": None})


def test_ensemble_is_the_weighted_mean_of_member_logits() -> None:
    torch.manual_seed(0)
    first, second = nn.Linear(3, 2), nn.Linear(3, 2)
    inputs = torch.randn(5, 3)
    ensemble = TeacherEnsemble([first, second], weights=[3.0, 1.0])
    expected = 0.75 * first(inputs) + 0.25 * second(inputs)
    torch.testing.assert_close(ensemble(inputs), expected)
    with pytest.raises(ValueError, match="got 1 weights for 2"):
        TeacherEnsemble([first, second], weights=[1.0])
    with pytest.raises(ValueError, match=">= 0 with a positive sum"):
        TeacherEnsemble([first, second], weights=[1.0, -1.0])
