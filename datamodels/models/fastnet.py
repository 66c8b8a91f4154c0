"""The fast CIFAR network (airbench94's architecture), K models at once as one grouped network.

One model: a frozen 2×2 whitening convolution (its bias trains briefly), GELU, three blocks
of [conv 3×3, max-pool 2, BatchNorm, GELU, conv 3×3, BatchNorm, GELU] of widths
(w, 4w, 4w), a global max-pool, a bias-free linear layer and a 1/9 output scale. BatchNorm
layers have a fixed unit scale and a trained shift (eps 1e-12).

K models: every layer holds K blocks of channels, model k's in block k. Convolutions use
``groups=K``, so no model sees another's activations; BatchNorm is per channel, so every
model keeps its own batch and running statistics; the head is a batched matmul. The input
is ``[B, K·c, H, W]`` (model k's own batch in channels ``k·c .. (k+1)·c``) and the output
``[B, K, C]``. With K = 1 the network is an ordinary module mapping images ``[B, c, H, W]``
to logits ``[B, C]`` (what the gradient estimators and ``build_module`` use), and its last
layer is an ``nn.Linear``.

Every parameter and buffer stores the K models along dimension 0 in blocks, so ``pack``
stacks K one-model state dicts into a grouped one and ``unpack`` takes model k back out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZE = 16  # 31 -> 15 -> 7 -> 3 px after the whitening layer and three pools (32 px input)


class _BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int, momentum: float) -> None:
        super().__init__(channels, eps=1e-12, momentum=1.0 - momentum)
        self.weight.requires_grad_(False)


class _Block(nn.Module):
    def __init__(self, K: int, c_in: int, c_out: int, momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(K * c_in, K * c_out, 3, padding="same", bias=False, groups=K)
        self.norm1 = _BatchNorm(K * c_out, momentum)
        self.conv2 = nn.Conv2d(K * c_out, K * c_out, 3, padding="same", bias=False, groups=K)
        self.norm2 = _BatchNorm(K * c_out, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class GroupedLinear(nn.Linear):
    """K bias-free linear maps: weight ``[K·out, in]``; ``[B, K·in] -> [B, K, out]`` (for K = 1
    an ordinary ``nn.Linear``, ``[B, in] -> [B, out]``)."""

    def __init__(self, K: int, in_features: int, out_features: int) -> None:
        super().__init__(in_features, K * out_features, bias=False)
        self.K, self.out = K, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.K == 1:
            return super().forward(x)
        w = self.weight.view(self.K, self.out, self.in_features)
        return torch.einsum("bki,koi->bko", x.view(len(x), self.K, self.in_features), w)


class FastNet(nn.Module):
    def __init__(
        self, K: int = 1, num_classes: int = 10, width: int = 64, in_channels: int = 3,
        bn_momentum: float = 0.6, scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        self.K, self.in_channels, self.scale = K, in_channels, scale
        whiten = 2 * in_channels * 2 * 2  # ± the eigenvectors of 2×2 patches
        widths = (width, 4 * width, 4 * width)
        self.whiten = nn.Conv2d(K * in_channels, K * whiten, 2, bias=True, groups=K)
        self.whiten.weight.requires_grad_(False)
        self.block1 = _Block(K, whiten, widths[0], bn_momentum)
        self.block2 = _Block(K, widths[0], widths[1], bn_momentum)
        self.block3 = _Block(K, widths[1], widths[2], bn_momentum)
        self.head = GroupedLinear(K, widths[2], num_classes)
        for conv in (m for m in self.modules() if isinstance(m, nn.Conv2d)):
            if conv is not self.whiten:  # airbench: identity on the first c_in filters
                w = conv.weight.data.view(K, -1, *conv.weight.shape[1:])
                for k in range(K):
                    nn.init.dirac_(w[k, : w.shape[2]])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        return torch.amax(x, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.scale


def build_fastnet(
    seed: int, num_classes: int, width: int, in_channels: int = 3, K: int = 1
) -> FastNet:
    """One model (K = 1) drawn from a generator seeded by ``seed`` (``pack`` K of them for a
    grouped network)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return FastNet(K, num_classes, width, in_channels)


def pack(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K one-model state dicts -> the grouped network's (blocks along dimension 0)."""
    packed = {}
    for name, first in states[0].items():
        if first.ndim == 0:  # BatchNorm's num_batches_tracked: unused (momentum is set)
            packed[name] = first.clone()
        else:
            packed[name] = torch.cat([s[name] for s in states])
    return packed


def unpack(state: dict[str, torch.Tensor], K: int, k: int) -> dict[str, torch.Tensor]:
    """Model k's one-model state dict out of a grouped network's (CPU copies)."""
    out = {}
    for name, t in state.items():
        if t.ndim == 0:
            out[name] = t.detach().cpu().clone()
        else:
            block = t.shape[0] // K
            out[name] = t[k * block : (k + 1) * block].detach().cpu().clone()
    return out


def patch_whitening(images: torch.Tensor, eps: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """airbench's whitening filters from images ``[n, c, H, W]``: the eigenvectors of the 2×2
    patch covariance scaled by 1/sqrt(eigenvalue + eps), and their negatives ->
    weight ``[2·c·4, c, 2, 2]``."""
    c = images.shape[1]
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c, 2, 2)
    flat = patches.reshape(len(patches), -1).double()
    covariance = flat.T @ flat / len(flat)
    values, vectors = torch.linalg.eigh(covariance)
    values, vectors = values.flip(0), vectors.T.flip(0)
    scaled = (vectors / torch.sqrt(values.clamp(min=0) + eps).view(-1, 1)).reshape(-1, c, 2, 2)
    return torch.cat([scaled, -scaled]).float()
