"""What a trained model is recorded by: margins on every evaluation example and test accuracy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from datamodels.train.data import TrainData


@dataclass(frozen=True)
class CheckpointRequest:
    """Which of a call's K models save checkpoints (``rows``) and after which 1-based
    ``epochs`` (``plans.checkpoint_epochs``)."""

    rows: tuple[int, ...]
    epochs: tuple[int, ...]


@dataclass
class Snapshot:
    """One model's parameters after ``epoch`` (CPU tensors, the architecture's layer order)
    and ``lr``, the mean learning rate of the steps since the previous snapshot."""

    row: int
    epoch: int
    lr: float
    params: list[torch.Tensor] = field(default_factory=list)


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits float[K, n, C], labels int64[n] -> float[K, n]: correct logit minus the largest
    other."""
    correct = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(2)
    others = logits.scatter(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1), float("-inf"))
    return correct - others.amax(2)


@torch.no_grad()
def margins_and_accuracy(
    forward: Callable[[torch.Tensor, slice], torch.Tensor], data: TrainData, K: int,
    models_per_chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``forward(eval_x, models_slice)`` -> logits[k, n_eval, C] for a slice of the K models.
    Returns (margins float32[K, n_eval], test accuracy float32[K])."""
    margins = np.empty((K, len(data.eval_y)), dtype=np.float32)
    for start in range(0, K, models_per_chunk):
        sl = slice(start, min(K, start + models_per_chunk))
        logits = forward(data.eval_x, sl)
        margins[sl] = margins_from_logits(logits, data.eval_y).float().cpu().numpy()
    if data.n_test:
        accuracy = (margins[:, : data.n_test] > 0).mean(1).astype(np.float32)
    else:
        accuracy = np.full(K, np.nan, np.float32)
    return margins, accuracy
