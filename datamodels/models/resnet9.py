"""ResNet-9 (the fast CIFAR-10 recipe's network), with a width multiplier.

prep conv -> [conv, pool, residual] -> [conv, pool] -> [conv, pool, residual] -> global
max-pool -> linear, with the output scaled by 1/8. Each model has its own BatchNorm layers,
so nothing is shared between models trained in the same worker.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(8 * w, num_classes, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 0.125


def build_resnet9(seed: int, num_classes: int, width: int, in_channels: int = 3) -> ResNet9:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return ResNet9(num_classes, width, in_channels)
