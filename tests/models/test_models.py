"""Reference models: shapes, architecture facts, parameter counts, tap paths, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchkd.models import (
    CNN1D,
    CNN1DBN,
    MLP,
    CNN1DExits,
    DigitsCNN,
    ResNet,
    available_models,
    create_model,
)

# Published parameter counts (CIFAR-100 heads), CRD / RepDistiller model tables.
PUBLISHED_MILLIONS = {"resnet32x4": 7.43, "resnet8x4": 1.23, "wrn_40_2": 2.26, "resnet56": 0.86}


def _num_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def _example_input(name: str) -> torch.Tensor:
    if name in ("cnn1d", "cnn1d_bn", "cnn1d_exits", "mlp"):
        return torch.randn(2, 1, 40)
    if name == "digits_cnn":
        return torch.randn(2, 1, 8, 8)
    return torch.randn(2, 3, 32, 32)


CLASSIFIERS = [name for name in available_models() if not name.startswith("hf_")]  # HF: test_hf


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_every_registered_model_maps_batch_to_logits(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(_example_input(name))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    for path in (*model.feature_layers, model.embedding_layer):
        model.get_submodule(path)  # every advertised tap path exists


@pytest.mark.parametrize(("name", "millions"), sorted(PUBLISHED_MILLIONS.items()))
def test_cifar_parameter_counts_match_published(name: str, millions: float) -> None:
    assert _num_parameters(create_model(name)) / 1e6 == pytest.approx(millions, abs=0.005)


@pytest.mark.parametrize("width", [6, 25, 64])
def test_cnn1d_parameter_count_formula(width: int) -> None:
    # conv1: 1->w, k5; conv2/conv3: w->w, k3; head: w * 5 positions -> 10
    expected = (5 * width + width) + 2 * (3 * width * width + width) + (5 * width * 10 + 10)
    assert _num_parameters(CNN1D(width)) == expected


def test_cnn1d_matches_functional_reference_and_tap_shapes() -> None:
    torch.manual_seed(0)
    model = CNN1D(width=6)
    inputs = torch.randn(3, 1, 40)
    weights = [getattr(model, f"conv{i}")[0] for i in (1, 2, 3)]
    hidden = inputs
    for conv in weights:
        hidden = F.relu(F.conv1d(hidden, conv.weight, conv.bias, stride=2, padding=1))
    expected = hidden.reshape(3, -1) @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(model(inputs), expected)
    captured: dict[str, torch.Tensor] = {}
    for path in model.feature_layers:
        model.get_submodule(path).register_forward_hook(
            lambda module, args, output, path=path: captured.__setitem__(path, output)
        )
    model(inputs)
    assert {path: tuple(out.shape) for path, out in captured.items()} == {
        "conv1": (3, 6, 19),
        "conv2": (3, 6, 10),
        "conv3": (3, 6, 5),
    }
    assert (captured["conv1"] >= 0).all()  # taps see post-ReLU features
    torch.testing.assert_close(model(inputs[:, 0]), model(inputs))  # [B, 40] accepted


def test_mlp_flattens_and_names_layers() -> None:
    torch.manual_seed(0)
    model = MLP(40, hidden=(16, 8))
    inputs = torch.randn(4, 1, 40)
    torch.testing.assert_close(model(inputs), model(inputs.flatten(1)))
    first = model.hidden1[0]
    second = model.hidden2[0]
    hidden = F.relu(
        F.relu(inputs.flatten(1) @ first.weight.T + first.bias) @ second.weight.T + second.bias
    )
    torch.testing.assert_close(model(inputs), model.head(hidden))
    assert model.feature_layers == ("hidden1", "hidden2")
    assert MLP(40, hidden=()).feature_layers == ()


def test_resnet_preact_tap_is_the_residual_sum_before_relu() -> None:
    model = ResNet(8, (4, 4, 8, 8), num_classes=3).eval()
    block = model.layer3[-1]
    captured: dict[str, torch.Tensor] = {}
    block.preact.register_forward_hook(lambda m, a, out: captured.__setitem__("preact", out))
    block.register_forward_hook(lambda m, a, out: captured.__setitem__("out", out))
    model(torch.randn(2, 3, 16, 16))
    assert (captured["preact"] < 0).any()
    torch.testing.assert_close(captured["out"], captured["preact"].relu())


def test_cnn1d_exits_returns_the_backbones_logits_and_taps_its_exits() -> None:
    torch.manual_seed(0)
    model = CNN1DExits(width=6)
    backbone = CNN1D(width=6)
    backbone.load_state_dict(model.state_dict(), strict=False)  # the exits are extra
    inputs = torch.randn(3, 1, 40)
    torch.testing.assert_close(model(inputs), backbone(inputs))
    captured: dict[str, torch.Tensor] = {}
    for path in ("exit1", "exit2", "exit1.bottleneck", "exit2.bottleneck", "flatten"):
        model.get_submodule(path).register_forward_hook(
            lambda module, args, output, path=path: captured.__setitem__(path, output)
        )
    model(inputs)
    shapes = {path: tuple(out.shape) for path, out in captured.items()}
    assert shapes == {
        "exit1": (3, 10),
        "exit2": (3, 10),
        "exit1.bottleneck": (3, 30),
        "exit2.bottleneck": (3, 30),
        "flatten": (3, 30),
    }


def test_cnn1d_bn_normalizes_each_stage_before_its_relu() -> None:
    model = CNN1DBN(width=6).eval()
    plain = CNN1D(width=6).eval()
    plain.load_state_dict(
        {k.replace(".2.", ".1."): v for k, v in model.state_dict().items() if ".1." not in k}
    )
    inputs = torch.randn(3, 1, 40)
    # fresh BatchNorm in eval mode (running mean 0, variance 1) is x / sqrt(1 + eps)
    for name in model.feature_layers:
        model.get_submodule(name)[1].eps = 0.0
    torch.testing.assert_close(model(inputs), plain(inputs))
    assert [type(m).__name__ for m in model.conv1] == ["Conv1d", "BatchNorm1d", "ReLU"]


def test_construction_is_deterministic_under_seed() -> None:
    torch.manual_seed(3)
    first = create_model("cnn1d", width=8).state_dict()
    torch.manual_seed(3)
    again = create_model("cnn1d", width=8).state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    other = create_model("cnn1d", width=8).state_dict()
    assert not torch.equal(first["head.weight"], other["head.weight"])


def test_registry_errors_and_pass_through() -> None:
    with pytest.raises(KeyError, match="did you mean 'resnet8x4'"):
        create_model("resnet8x5")
    model = DigitsCNN()
    assert create_model(model) is model
    with pytest.raises(TypeError, match="keyword arguments"):
        create_model(model, width=3)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"CNN1D expects inputs \[B, 1, 40\], got \(2, 1, 39\)"):
        CNN1D(4)(torch.zeros(2, 1, 39))
    with pytest.raises(ValueError, match="flattening to"):
        MLP(40)(torch.zeros(2, 41))
    with pytest.raises(ValueError, match="DigitsCNN expects"):
        DigitsCNN()(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="6n \\+ 2"):
        ResNet(9, (16, 16, 32, 64))
    with pytest.raises(ValueError, match="images"):
        create_model("resnet8")(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="width"):
        CNN1D(0)
