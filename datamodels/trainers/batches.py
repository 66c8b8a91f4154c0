"""One model's minibatches, epoch by epoch, and the seeded random state of one model.

``resident_batches``: from the resident tensors, in the per-model orders the batched trainer
draws (``orders.EpochOrders``), so the same seed gives the same batches on every path;
``ffcv_batches``: from one FFCV ``Loader`` over the model's subset (``loader="per_model"``,
datasets larger than memory). Each yields ``recipe.epochs`` iterators of (x, y) batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from datamodels.config import TrainConfig
from datamodels.data.beton import subset_loader
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import EpochOrders

Batches = Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Random ops of a user's module or recipe (dropout, ...) draw from the model's own seed,
    so a seed gives one model; the process's generators are left as they were."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) + 2)
        yield


def resident_batches(data: TrainData, mask: np.ndarray, seed: int, recipe: TrainConfig) -> Batches:
    """Batches of the model's subset (``mask`` bool[n_train]) from the resident tensors."""
    orders = EpochOrders(mask[None], np.array([seed]), recipe.batch_size)
    size, B = int(orders.subset_sizes[0]), recipe.batch_size
    for _ in range(recipe.epochs):
        index, _ = orders.next_epoch()
        chosen = torch.from_numpy(index[0, :size]).to(data.train_y.device)
        yield (
            (data.train_x[chosen[i : i + B]], data.train_y[chosen[i : i + B]])
            for i in range(0, size, B)
        )


def ffcv_batches(data: TrainData, mask: np.ndarray, seed: int, recipe: TrainConfig) -> Batches:
    """Batches of the model's subset read from the beton by one FFCV loader."""
    loader = subset_loader(data.beton_path, data.train_index[mask], recipe.batch_size, seed)
    device = data.train_y.device
    for _ in range(recipe.epochs):
        yield ((data.normalize(x), y.reshape(-1).to(device)) for x, y in loader)


def batches_for(loader: str) -> Callable[[TrainData, np.ndarray, int, TrainConfig], Batches]:
    """``ffcv_batches`` for ``loader="per_model"``, else ``resident_batches``."""
    return ffcv_batches if loader == "per_model" else resident_batches
