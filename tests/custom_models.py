"""User code that test configs name by import path (``tests.custom_models:...``): a small
CNN, digits as 8×8 images, a recipe that repeats the built-in steps, output functions, and
factories that go wrong in the ways a user's do."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Two 3×3 convolutions and a linear head: images [B, C, H, W] -> logits [B, classes]."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: int = 8) -> None:
        super().__init__()
        channels, height, wide = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * (height // 2) * (wide // 2), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 8) -> nn.Module:
    return SmallCNN(num_classes, input_shape, width)


def make_bn_cnn(num_classes: int, input_shape: tuple[int, ...], width: int = 4) -> nn.Module:
    """A CNN with BatchNorm running statistics: it cannot be vmapped."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def make_dropout_mlp(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """Dropout draws random numbers: vmap (randomness="error") refuses it."""
    width = int(np.prod(input_shape))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(width, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, num_classes)
    )


def digit_images(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 images [N, 8, 8, 1] and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


class DigitPairs(torch.utils.data.Dataset):
    """The same digits as a Dataset of (image tensor uint8 [8, 8, 1], label) pairs."""

    def __init__(self, limit: int = 200) -> None:
        self.images, self.labels = digit_images(limit)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]), int(self.labels[i])


def digit_dataset(limit: int = 200) -> DigitPairs:
    return DigitPairs(limit)


def digits_with_split(limit: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = digit_images(limit)
    return images, labels, np.arange(len(labels)) % 4 == 0


def builtin_steps(module, subset, *, seed, device, recipe):
    """The built-in recipe written as a ``train.recipe``: SGD with momentum and coupled
    weight decay, the schedule's learning rate per step, mean cross-entropy per batch."""
    optimizer = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )
    step, losses = 0, []
    for batches in subset.epochs():
        losses = []
        for x, y in batches:
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * subset.lr_factor(step)
            loss = F.cross_entropy(module(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
    return module, float(torch.stack(losses).double().mean()) if losses else 0.0


def correct_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A user output: the softmax probability of the correct class, float[n]."""
    return logits.softmax(-1).gather(1, labels.view(-1, 1)).squeeze(1)


def one_number(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.sum()


def make_raising(num_classes: int) -> nn.Module:
    raise RuntimeError("no weights file at /nowhere/cnn.pt")


def make_wrong_width(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes + 3))


def not_a_module() -> str:
    return "cnn"


def recipe_returning_none(module, subset, *, seed, device, recipe):
    return None
