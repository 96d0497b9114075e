"""Taps: capture by dotted path (numeric indices included), clear errors, clean hook removal."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchkd.taps import Taps, resolve_module


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, inputs: Tensor) -> Tensor:
        return inputs + self.conv2(torch.relu(self.conv1(inputs)))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.layer3 = nn.Sequential(Block(4), Block(4))
        self.rnn = nn.GRU(4, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, inputs: Tensor) -> Tensor:
        features = self.layer3(self.stem(inputs))
        sequence, _ = self.rnn(features.flatten(2).transpose(1, 2))
        return self.head(sequence[:, -1])


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_numeric_paths_capture_the_module_outputs() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    inputs = torch.randn(2, 3, 6, 6)
    with Taps(net, ["layer3.1.conv2", "layer3.0", "stem"]) as taps:
        net(inputs)
    stem = net.stem(inputs)
    block0 = net.layer3[0](stem)
    expected_conv2 = net.layer3[1].conv2(torch.relu(net.layer3[1].conv1(block0)))
    torch.testing.assert_close(taps["stem"], stem)
    torch.testing.assert_close(taps["layer3.0"], block0)
    torch.testing.assert_close(taps["layer3.1.conv2"], expected_conv2)


def test_tuple_output_keeps_first_element_and_dict_stays_dict() -> None:
    class DictOut(nn.Module):
        def forward(self, inputs: Tensor) -> dict[str, Tensor]:
            return {"a": inputs * 2}

    net = TinyNet()
    net.extra = DictOut()
    with Taps(net, ["rnn", "extra"]) as taps:
        net(torch.randn(2, 3, 4, 4))
        net.extra(torch.ones(1))
    assert taps["rnn"].shape == (2, 16, 5)  # GRU returns (output, h_n): output kept
    assert taps["extra"] == {"a": torch.full((1,), 2.0)}


def test_unknown_path_lists_close_names() -> None:
    net = TinyNet()
    with pytest.raises(KeyError, match=r"'layer3\.1\.conv2'"):
        Taps(net, ["layer3.1.conv3"])
    with pytest.raises(KeyError, match="no module at path 'nothing_like_it'"):
        resolve_module(net, "nothing_like_it")
    assert all_hooks(net) == 0  # nothing attached when construction fails


def test_hooks_removed_on_exit_exception_and_remove() -> None:
    net = TinyNet()
    with Taps(net, ["stem", "layer3.1"]):
        assert all_hooks(net) == 3  # two taps + the root's reset pre-hook
    assert all_hooks(net) == 0
    with pytest.raises(RuntimeError, match="boom"), Taps(net, ["stem"]):
        raise RuntimeError("boom")
    assert all_hooks(net) == 0
    taps = Taps(net, ["stem"])
    taps.remove()
    taps.remove()
    assert all_hooks(net) == 0


def test_each_forward_starts_fresh_and_double_call_is_an_error() -> None:
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.ReLU())
    with Taps(net, ["0"]) as taps:
        net(torch.ones(1, 3))
        net(torch.zeros(1, 3))  # a second forward is not "ran twice": the record restarts
    torch.testing.assert_close(taps["0"], shared.bias.detach().unsqueeze(0))
    twice = nn.Sequential(shared, shared)
    with Taps(twice, ["0"]), pytest.raises(RuntimeError, match="more than once"):
        twice(torch.ones(1, 3))


def test_missing_output_message() -> None:
    net = TinyNet()
    with Taps(net, ["head"]) as taps:
        net.stem(torch.randn(1, 3, 4, 4))
    with pytest.raises(KeyError, match="did not run"):
        taps["head"]
    with pytest.raises(KeyError, match="not tapped"):
        taps["stem"]
