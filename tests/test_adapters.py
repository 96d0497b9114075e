"""build_adapter: every shape case gives the teacher's shape; impossible cases fail clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkd.adapters import build_adapter


def layer_types(adapter: nn.Module) -> list[type[nn.Module]]:
    children = list(adapter.children())
    return [type(child) for child in children] if children else [type(adapter)]


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "expected_layers"),
    [
        ((4, 8, 6, 6), (4, 8, 6, 6), [nn.Identity]),
        ((4, 8, 6, 6), (4, 16, 6, 6), [nn.Conv2d, nn.BatchNorm2d]),
        ((4, 8, 6, 6), (4, 8, 3, 3), [nn.AdaptiveAvgPool2d]),
        ((4, 8, 6, 6), (4, 16, 3, 2), [nn.AdaptiveAvgPool2d, nn.Conv2d, nn.BatchNorm2d]),
        ((4, 6, 10), (4, 12, 10), [nn.Conv1d, nn.BatchNorm1d]),
        ((4, 6, 10), (4, 12, 5), [nn.AdaptiveAvgPool1d, nn.Conv1d, nn.BatchNorm1d]),
        ((4, 7, 16), (4, 7, 32), [nn.Linear]),  # token features [B, L, D]
        ((4, 16), (4, 32), [nn.Linear]),
    ],
)
def test_auto_adapter_maps_to_teacher_shape(
    student_shape: tuple[int, ...],
    teacher_shape: tuple[int, ...],
    expected_layers: list[type[nn.Module]],
) -> None:
    adapter = build_adapter(student_shape, teacher_shape)
    assert layer_types(adapter) == expected_layers
    assert adapter(torch.randn(student_shape)).shape == teacher_shape


def test_conv_adapter_is_a_per_position_channel_map() -> None:
    torch.manual_seed(0)
    adapter = build_adapter((2, 3, 4, 4), (2, 5, 4, 4), "conv1x1").eval()
    features = torch.randn(2, 3, 4, 4)
    conv, norm = adapter[0], adapter[1]
    mixed = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], features)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    expected = (mixed - norm.running_mean[:, None, None]) * scale[:, None, None]
    expected = expected + norm.bias[:, None, None]
    torch.testing.assert_close(adapter(features), expected)


def test_pool_adapter_averages_blocks() -> None:
    adapter = build_adapter((1, 2, 4, 4), (1, 2, 2, 2), "pool")
    features = torch.arange(32.0).reshape(1, 2, 4, 4)
    expected = features.reshape(1, 2, 2, 2, 2, 2).mean(dim=(3, 5))
    torch.testing.assert_close(adapter(features), expected)


def test_explicit_kinds() -> None:
    assert isinstance(build_adapter((2, 8), (2, 8), "linear"), nn.Linear)  # built even if equal
    equal_conv = build_adapter((2, 8, 3, 3), (2, 8, 3, 3), "conv1x1")
    assert layer_types(equal_conv) == [nn.Conv2d, nn.BatchNorm2d]
    assert isinstance(build_adapter((2, 8, 3), (2, 8, 3), "pool"), nn.Identity)
    assert isinstance(build_adapter((2, 8, 3), (2, 9), "none"), nn.Identity)  # unchecked
    pooled = build_adapter((2, 8, 10), (2, 8, 5), "pool")  # channels-first length mismatch
    assert pooled(torch.randn(2, 8, 10)).shape == (2, 8, 5)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "kind", "message"),
    [
        ((4, 8, 6, 6), (4, 8, 36), "auto", r"different ranks.*\(4, 8, 6, 6\).*\(4, 8, 36\)"),
        ((4, 8), (5, 8), "auto", r"batch sizes differ \(4 vs 5\).*\(4, 8\).*\(5, 8\)"),
        ((4, 8, 6), (4, 16, 3), "linear", r"only the last dimension"),
        ((4, 8, 6, 6), (4, 16, 6, 6), "pool", r"keeps the channels.*conv1x1"),
        ((4, 8), (4, 16), "conv1x1", r"\[B, C, L\] or \[B, C, H, W\]"),
        ((2, 3, 4, 5, 6), (2, 3, 4, 5, 7), "auto", r"no automatic adapter for rank-5"),
        ((4,), (4,), "auto", r"a batch and a feature dimension"),
        ((4, 8), (4, 8), "bilinear", r"adapter kind must be one of"),
    ],
)
def test_impossible_cases_name_both_shapes(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kind: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_adapter(student_shape, teacher_shape, kind)  # type: ignore[arg-type]
