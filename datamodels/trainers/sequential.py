"""The one-model-at-a-time path: a plain ``nn.Module`` + ``torch.optim`` loop per model.

Batches come either from the resident tensors (the same per-model orders as the batched
trainer, so the same seed gives the same model up to float rounding) or from one FFCV
``Loader`` per model over its subset (``loader="per_model"``; datasets larger than memory),
``trainers.batches``. This path trains every architecture that builds an ``nn.Module``
(``Architecture.build_module``): those without a stacked form (``resnet9``), factory modules
that cannot be vmapped (``trainers.vmapped``), and every model of a ``train.recipe`` (a
user's training function, ``trainers.custom``). The architecture declares its optimiser's
Nesterov momentum, its augmentation and its checkpoint layout.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.config import ModelConfig, TrainConfig
from datamodels.models import Architecture, architecture
from datamodels.models.resnet9 import build_resnet9  # noqa: F401 - tests build it from here
from datamodels.trainers.batches import batches_for, seeded_rng
from datamodels.trainers.custom import train_with_recipe
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy
from datamodels.trainers.unit_progress import report

__all__ = ["build_module", "module_layers", "seeded_rng", "train_one", "train_sequential"]


def build_module(
    model: ModelConfig, data: TrainData, seed: int, arch: Architecture | None = None
) -> nn.Module:
    """The architecture's ``nn.Module`` (inputs to logits) with the initial weights of
    ``seed``; ``custom``: what ``model.factory`` returns (``models.factory``)."""
    return (arch or architecture(model.arch)).build_module(model, data, seed)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel-padded random crop, per image (CIFAR recipe)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def train_one(
    data: TrainData, mask: np.ndarray, seed: int, model: ModelConfig, recipe: TrainConfig,
    loader: str = "resident", save_after: tuple[int, ...] = (), arch: Architecture | None = None,
) -> tuple[nn.Module, float, list[Snapshot]]:
    """Train one model on ``mask`` (bool[n_train]); returns (module in eval mode, last-epoch
    loss, snapshots of its ``state_dict`` tensors after the 1-based epochs ``save_after``)."""
    arch = arch or architecture(model.arch)
    device = data.train_y.device
    module = build_module(model, data, seed, arch).to(device)
    optimizer = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, nesterov=arch.nesterov,
    )
    size = int(mask.sum())
    steps_per_epoch = -(-size // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    epochs = batches_for(loader)(data, mask, seed, recipe)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    step, last_loss = 0, 0.0
    snapshots: list[Snapshot] = []
    previous_save = 0
    module.train()
    for epoch, batches in enumerate(epochs):
        losses = []
        for x, y in batches:
            factor = float(lr_factors(recipe.schedule, np.array(step), np.array(total)))
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * factor
            if arch.augments:
                x = _augment(x, gen)
            loss = F.cross_entropy(module(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
        if epoch == recipe.epochs - 1:
            last_loss = float(torch.stack(losses).double().mean()) if losses else 0.0
        if epoch + 1 in save_after:
            lr = interval_lr(
                recipe.schedule, recipe.lr, steps_per_epoch, recipe.epochs, previous_save, epoch
            )
            snapshots.append(Snapshot(0, epoch + 1, lr, arch.module_layers(module)))
            previous_save = epoch + 1
    return module.eval(), last_loss, snapshots


def module_layers(module: nn.Module, model: ModelConfig) -> list[torch.Tensor]:
    """CPU copies of a module's parameters as its architecture checkpoints them
    (``Architecture.module_layers``: ``mlp`` in the stacked layout ``[W1 [d, h], b1, ...]``,
    else the ``state_dict`` tensors in order)."""
    return architecture(model.arch).module_layers(module)


def train_sequential(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig, recipe: TrainConfig,
    loader: str = "resident", checkpoints: CheckpointRequest | None = None,
    arch: Architecture | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """Same contract as the batched trainers, one model after another."""
    arch = arch or architecture(model.arch)
    K = len(seeds)
    margins = np.empty((K, len(data.eval_y)), dtype=np.float32)
    losses = np.empty(K, dtype=np.float32)
    accuracy = np.empty(K, dtype=np.float32)
    snapshots: list[Snapshot] = []
    rows = set(checkpoints.rows) if checkpoints else set()
    for k in range(K):
        save_after = checkpoints.epochs if k in rows else ()
        user_code = arch.user_code or recipe.recipe is not None
        with seeded_rng(int(seeds[k]), data.train_y.device) if user_code else nullcontext():
            if recipe.recipe is not None:
                module, loss, saved = train_with_recipe(
                    data, masks[k], int(seeds[k]), model, recipe, loader, save_after, arch
                )
            else:
                module, loss, saved = train_one(
                    data, masks[k], int(seeds[k]), model, recipe, loader, save_after, arch
                )
        for snap in saved:
            snap.row = k
        snapshots += saved
        forward = lambda x, sl, module=module: _eval_logits(module, x)  # noqa: E731
        m, a = margins_and_accuracy(forward, data, 1)
        margins[k], losses[k], accuracy[k] = m[0], loss, a[0]
        report(k + 1, K)  # one model of the task's K done
    return margins, losses, accuracy, snapshots


@torch.no_grad()
def _eval_logits(module: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    logits = [module(x[i : i + chunk]).float() for i in range(0, len(x), chunk)]
    return torch.cat(logits).unsqueeze(0)
