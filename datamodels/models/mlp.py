"""Multi-layer perceptron, in two equivalent forms.

* Stacked parameters for K models at once: a list ``[W1 [K, d, h], b1 [K, h], ...,
  Wout [K, h, C], bout [K, C]]`` and ``stacked_forward`` (batched matmuls; no statistics
  shared across models).
* A plain ``torch.nn.Sequential`` for the one-model-at-a-time path, built from the same
  initial values so both paths start every model from the same point.
* ``accumulate_gradients``: the batched trainer's forward and backward pass written out by
  hand (a few batched matmuls; no autograd graph), on the same stacked parameters except that
  the output weight is kept transposed (``output_transposed``), which makes the thin
  ``C``-column products of the output layer about 3x faster on CPU.

Initialisation follows ``torch.nn.Linear``: weights and biases ~ U(-1/sqrt(fan_in), +).
The hidden activation φ (``relu`` by default) is an ``activations.Activation``, the one
definition every path shares.
"""

from __future__ import annotations

import torch
from torch import nn

from datamodels.models.activations import RELU, Activation


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


def stacked_forward(
    params: list[torch.Tensor], x: torch.Tensor, activation: Activation = RELU
) -> torch.Tensor:
    """Logits of K models. ``x``: float[K, B, d] (each model its own batch) or float[B, d]
    (one batch shared by all models); returns float[K, B, C]."""
    h = x
    last = len(params) // 2 - 1
    for layer in range(last + 1):
        weight, bias = params[2 * layer], params[2 * layer + 1]
        h = torch.matmul(h, weight) + bias.unsqueeze(-2)
        if layer < last:
            h = activation(h)
    return h


def output_transposed(layers: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[W1, b1, ..., Wout [K, h, C], bout]`` -> the same list with ``WoutT [K, C, h]``
    (contiguous); applied twice it gives the original layout back."""
    return [*layers[:-2], layers[-2].transpose(1, 2).contiguous(), layers[-1]]


def accumulate_gradients(
    layers: list[torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
    example_weight: torch.Tensor, label_smoothing: float, grads: list[torch.Tensor],
    beta: float, want_loss: bool = False, activation: Activation = RELU,
) -> torch.Tensor | None:
    """``grads ← beta·grads + ∇L`` for K MLPs at once, each on its own batch, in place (with
    ``beta = 0`` the old ``grads`` are ignored, NaN included; with ``beta = momentum`` this
    is the momentum update of SGD fused into the gradient matmuls).

    ``layers``: ``[W1 [K, d, h], b1 [K, h], ..., WoutT [K, C, h], bout [K, C]]`` (output
    weight transposed) and ``grads`` the same shapes; ``x``: float[K, B, d]; ``labels``:
    int64[K, 1, B]; ``example_weight`` w: float[K, 1, B]. With ε = ``label_smoothing`` and
    q_i = (1 − ε)·onehot(y_i) + ε/C the target distribution of example i, the objective is

        L_k = Σ_i w_i · CE(z_i, q_i),   CE(z, q) = logsumexp(z) − q·z,
        ∂L_k/∂z_i = w_i·softmax(z_i) − w_i·q_i,

    with z_i the logits of model k on its example i; back through the layers:
    ∂W = Aᵀ·∂Z, ∂b = Σ_i ∂Z_i, ∂A_prev = ∂Z·Wᵀ and ∂Z = ∂A ⊙ φ'(Z) at the activation φ
    (``activation``; ReLU: [Z > 0]). Returns L: float[K] when ``want_loss``."""
    n_layers = len(layers) // 2
    activations, kept = [x], []
    for layer in range(n_layers - 1):
        weight, bias = layers[2 * layer], layers[2 * layer + 1]
        hidden, keep = activation.forward_(
            torch.baddbmm(bias.unsqueeze(1), activations[-1], weight)
        )
        activations.append(hidden)
        kept.append(keep)
    # logits transposed, [K, C, B]: the product with C rows is the fast one
    logits = torch.baddbmm(layers[-1].unsqueeze(2), layers[-2], activations[-1].transpose(1, 2))
    num_classes = logits.shape[1]
    loss = None
    if want_loss:
        per_example = torch.logsumexp(logits, 1, keepdim=True)
        per_example -= (1 - label_smoothing) * logits.gather(1, labels)
        if label_smoothing:
            per_example -= (label_smoothing / num_classes) * logits.sum(1, keepdim=True)
        loss = (per_example * example_weight).sum((1, 2))
    delta = torch.softmax(logits, 1).mul_(example_weight)  # ∂L/∂zᵀ [K, C, B] from here
    delta.scatter_add_(1, labels, example_weight * (label_smoothing - 1))
    if label_smoothing:
        delta -= example_weight * (label_smoothing / num_classes)
    grads[-2].baddbmm_(delta, activations[-1], beta=beta)
    _accumulate(grads[-1], delta.sum(2), beta)
    upstream = torch.bmm(delta.transpose(1, 2), layers[-2])  # ∂L/∂A [K, B, h]
    for layer in reversed(range(n_layers - 1)):
        delta = activation.backward(upstream, kept[layer])
        grads[2 * layer].baddbmm_(activations[layer].transpose(1, 2), delta, beta=beta)
        _accumulate(grads[2 * layer + 1], delta.sum(1), beta)
        if layer:
            upstream = torch.bmm(delta, layers[2 * layer].transpose(1, 2))
    return loss


def _accumulate(out: torch.Tensor, value: torch.Tensor, beta: float) -> None:
    if beta == 0:
        out.copy_(value)
    else:
        out.mul_(beta).add_(value)


def to_module(params: list[torch.Tensor], activation: Activation = RELU) -> nn.Sequential:
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
            layers.append(activation.module())
    return nn.Sequential(*layers)
