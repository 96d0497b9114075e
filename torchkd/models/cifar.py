"""CIFAR ResNets and Wide ResNets in the variants used by the KD literature (CRD/RepDistiller).

- ``ResNet`` (He et al., "Deep Residual Learning for Image Recognition", 2016, CIFAR variant):
  a 3×3 stem, three stages of ``n = (depth - 2) / 6`` basic blocks (strides 1, 2, 2), global
  average pooling and a linear classifier. Channels ``(16, 16, 32, 64)`` for resnet20/32/56/110;
  the ``x4`` variants of Tian et al. ("Contrastive Representation Distillation", 2020) use
  ``(32, 64, 128, 256)``.
- ``WideResNet`` (Zagoruyko & Komodakis, "Wide Residual Networks", 2016): pre-activation
  blocks, ``n = (depth - 4) / 6`` per stage, channels ``(16, 16k, 32k, 64k)`` for widen
  factor ``k``.

Stable feature-tap paths: ``feature_layers`` are the three stages; ``embedding_layer`` is
``"pool"`` (the pooled, flattened ``[B, C]`` features). In a ResNet block, ``preact`` is the
residual sum before the final ReLU (tap ``layer3.<last>.preact`` for pre-activation features).
The default ``num_classes=100`` matches the CIFAR-100 benchmark.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from torchkd.models.registry import MODELS


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def _global_pool() -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _check_images(model_name: str, inputs: Tensor) -> None:
    if inputs.dim() != 4 or inputs.shape[1] != 3:
        raise ValueError(f"{model_name} expects images [B, 3, H, W], got {tuple(inputs.shape)}")


class ResidualBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.preact = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, inputs: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(inputs)))))
        return self.relu(self.preact(residual + self.shortcut(inputs)))


class ResNet(nn.Module):
    """CIFAR ResNet with basic blocks; ``depth = 6n + 2``.

    Args:
        depth: total depth (8, 14, 20, 32, 44, 56, 110, ...).
        channels: ``(stem, stage1, stage2, stage3)`` channel counts.
        num_classes: output logits.

    Example:
        >>> import torch
        >>> model = ResNet(8, (16, 16, 32, 64), num_classes=10)
        >>> tuple(model(torch.zeros(2, 3, 32, 32)).shape), model.feature_layers
        ((2, 10), ('layer1', 'layer2', 'layer3'))
    """

    feature_layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    embedding_layer = "pool"

    def __init__(
        self, depth: int, channels: tuple[int, int, int, int], num_classes: int = 100
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = _conv3x3(3, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU()
        in_channels = channels[0]
        for stage, (out_channels, stride) in enumerate(
            zip(channels[1:], (1, 2, 2), strict=True), start=1
        ):
            blocks = []
            for block in range(blocks_per_stage):
                blocks.append(ResidualBlock(in_channels, out_channels, stride if block == 0 else 1))
                in_channels = out_channels
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.pool = _global_pool()
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, inputs: Tensor) -> Tensor:
        _check_images("ResNet", inputs)
        features = self.relu(self.bn1(self.conv1(inputs)))
        features = self.layer3(self.layer2(self.layer1(features)))
        return self.fc(self.pool(features))


class WideBlock(nn.Module):
    """Pre-activation wide block: ``conv2(relu(bn2(conv1(a)))) + shortcut``, ``a = relu(bn1(x))``.

    The shortcut is ``x`` when the shape is kept, else a 1×1 convolution of ``a``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, inputs: Tensor) -> Tensor:
        activated = self.relu(self.bn1(inputs))
        residual = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(activated)))))
        return residual + (inputs if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    """Wide ResNet ``WRN-depth-k``; ``depth = 6n + 4``.

    Args:
        depth: total depth (16, 28, 40, ...).
        widen_factor: channel multiplier ``k``.
        num_classes: output logits.
        dropout: dropout probability between the two convolutions of a block.

    Example:
        >>> import torch
        >>> model = WideResNet(10, widen_factor=1, num_classes=10)
        >>> tuple(model(torch.zeros(2, 3, 32, 32)).shape)
        (2, 10)
    """

    feature_layers: tuple[str, ...] = ("block1", "block2", "block3")
    embedding_layer = "pool"

    def __init__(
        self, depth: int, widen_factor: int = 1, num_classes: int = 100, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if widen_factor <= 0:
            raise ValueError(f"widen_factor must be positive, got {widen_factor}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(3, 16)
        in_channels = 16
        for stage, (out_channels, stride) in enumerate(
            zip(widths, (1, 2, 2), strict=True), start=1
        ):
            blocks = []
            for block in range(blocks_per_stage):
                block_stride = stride if block == 0 else 1
                blocks.append(WideBlock(in_channels, out_channels, block_stride, dropout))
                in_channels = out_channels
            self.add_module(f"block{stage}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.pool = _global_pool()
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Tensor) -> Tensor:
        _check_images("WideResNet", inputs)
        features = self.block3(self.block2(self.block1(self.conv1(inputs))))
        return self.fc(self.pool(self.relu(self.bn(features))))


_BASE_CHANNELS = (16, 16, 32, 64)
_X4_CHANNELS = (32, 64, 128, 256)
for _depth in (8, 14, 20, 32, 44, 56, 110):
    MODELS.add(f"resnet{_depth}", partial(ResNet, _depth, _BASE_CHANNELS))
MODELS.add("resnet8x4", partial(ResNet, 8, _X4_CHANNELS))
MODELS.add("resnet32x4", partial(ResNet, 32, _X4_CHANNELS))
for _depth in (16, 40):
    for _widen in (1, 2):
        MODELS.add(f"wrn_{_depth}_{_widen}", partial(WideResNet, _depth, _widen))
