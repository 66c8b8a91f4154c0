"""CIFAR-shaped synthetic images with class structure a network can learn (nothing downloaded).

Each class has ``modes`` smooth colour prototypes (random low-resolution fields upsampled to
the image size). An image is one of its class's prototypes, shifted by up to ``shift``
pixels, mirrored at random, with random contrast and brightness, blended with a prototype of
another class at a random weight up to ``confusion``, plus pixel noise. Blends whose
distractor outweighs the true prototype make some labels unrecoverable, so accuracy stays
below 100% and better training shows. Used by the GPU benchmark and the tests; the format
(uint8 ``[n, H, W, 3]``, int64 labels) is what the CIFAR-10 reader returns.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def synthetic_cifar(
    n: int, seed: int = 0, classes: int = 10, size: int = 32, modes: int = 3,
    shift: int = 4, confusion: float = 1.2, noise: float = 0.35,
    prototype_seed: int = 12345,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 [n, size, size, 3]) and labels (int64 [n], balanced at random).
    ``prototype_seed`` fixes the classes: draws with different ``seed`` share them (train and
    test splits of one task)."""
    proto_gen = torch.Generator().manual_seed(prototype_seed)
    coarse = torch.randn(classes * modes, 3, 4, 4, generator=proto_gen)
    fine = torch.randn(classes * modes, 3, 8, 8, generator=proto_gen) * 0.5
    up = lambda t: F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)  # noqa: E731
    prototypes = up(coarse) + up(fine)
    prototypes = prototypes / prototypes.std(dim=(1, 2, 3), keepdim=True)

    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(0, classes, (n,), generator=gen)
    mode = torch.randint(0, modes, (n,), generator=gen)
    other = (labels + torch.randint(1, classes, (n,), generator=gen)) % classes
    other_mode = torch.randint(0, modes, (n,), generator=gen)
    weight = torch.rand(n, generator=gen) * confusion
    images = prototypes[labels * modes + mode] + weight.view(-1, 1, 1, 1) * prototypes[
        other * modes + other_mode
    ]
    dy, dx = (torch.randint(-shift, shift + 1, (2, n), generator=gen)).tolist()
    flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    for i in range(n):  # per-image shift and mirror (n ~ 10^4-10^5: fast enough in numpy)
        img = torch.roll(images[i], shifts=(dy[i], dx[i]), dims=(1, 2))
        images[i] = img.flip(2) if flips[i] else img
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen)
    brightness = 0.4 * torch.randn(n, 3, 1, 1, generator=gen)
    images = images * contrast + brightness + noise * torch.randn(images.shape, generator=gen)
    pixels = torch.sigmoid(images * 0.8) * 255.0
    out = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out.numpy(), labels.numpy().astype(np.int64)
