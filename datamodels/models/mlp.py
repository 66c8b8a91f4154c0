"""Multi-layer perceptron, in two equivalent forms.

* Stacked parameters for K models at once: a list ``[W1 [K, d, h], b1 [K, h], ...,
  Wout [K, h, C], bout [K, C]]`` and ``stacked_forward`` (batched matmuls; no statistics
  shared across models).
* A plain ``torch.nn.Sequential`` for the one-model-at-a-time path, built from the same
  initial values so both paths start every model from the same point.

Initialisation follows ``torch.nn.Linear``: weights and biases ~ U(-1/sqrt(fan_in), +).
"""

from __future__ import annotations

import torch
from torch import nn


def layer_sizes(in_dim: int, hidden: int, depth: int, num_classes: int) -> list[int]:
    return [in_dim] + [hidden] * depth + [num_classes]


def init_params(
    seed: int, sizes: list[int], dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """One model's parameters ``[W1 [d, h], b1 [h], ...]`` drawn from a generator seeded by
    ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    params: list[torch.Tensor] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = fan_in**-0.5
        params.append((torch.rand(fan_in, fan_out, generator=gen, dtype=dtype) * 2 - 1) * bound)
        params.append((torch.rand(fan_out, generator=gen, dtype=dtype) * 2 - 1) * bound)
    return params


def init_stacked(
    seeds: list[int], sizes: list[int], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    per_model = [init_params(s, sizes) for s in seeds]
    return [torch.stack(group).to(device) for group in zip(*per_model, strict=True)]


def stacked_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of K models. ``x``: float[K, B, d] (each model its own batch) or float[B, d]
    (one batch shared by all models); returns float[K, B, C]."""
    h = x
    last = len(params) // 2 - 1
    for layer in range(last + 1):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        h = torch.matmul(h, weight) + bias.unsqueeze(-2)
        if layer < last:
            h = torch.relu(h)
    return h


def to_module(params: list[torch.Tensor]) -> nn.Sequential:
    """A ``nn.Sequential`` holding one model's parameters (``params`` unstacked), in their dtype."""
    layers: list[nn.Module] = []
    n_layers = len(params) // 2
    for layer in range(n_layers):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        linear = nn.Linear(
            weight.shape[0], weight.shape[1], dtype=weight.dtype, device=weight.device
        )
        with torch.no_grad():
            linear.weight.copy_(weight.T)
            linear.bias.copy_(bias)
        layers.append(linear)
        if layer < n_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)
