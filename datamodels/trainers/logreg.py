"""The ``logreg`` trainer: each subset's convex optimum, found by L-BFGS in float64.

``resources.trainer: batched`` solves K subsets at once with the project's batched L-BFGS
(``batched.train_logreg_batched``); ``sequential`` solves one subset at a time with
``torch.optim.LBFGS`` (strong Wolfe). Both minimise the same objective (``batched.
logreg_objective``), so they share one optimum per subset, single-class subsets included.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodels.config import TrainConfig
from datamodels.trainers.batched import (
    logreg_objective,
    logreg_snapshot,
    logreg_weights,
    train_logreg_batched,
)
from datamodels.trainers.data import TrainData
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy


def train_logreg_one(
    data: TrainData, mask: np.ndarray, recipe: TrainConfig
) -> tuple[torch.Tensor, float, bool]:
    """``torch.optim.LBFGS`` (strong Wolfe, float64) on one subset: (params[P], loss, converged).

    The objective is the batched trainer's (``logreg_objective`` with its default centred-bias
    penalty λ_b = ``logreg_bias_decay(weight_decay)``), so both paths share one optimum per
    subset, single-class subsets included."""
    x = data.train_x.reshape(data.n_train, -1).double()
    C = data.num_classes
    weights = logreg_weights(mask[None], x.device)
    fun = logreg_objective(x, data.train_y, weights, C, recipe.weight_decay)
    params = torch.zeros(1, (x.shape[1] + 1) * C, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=recipe.max_iter * 5, tolerance_grad=recipe.tolerance / 10,
        tolerance_change=0.0, history_size=10, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        f, g = fun(params.detach())
        params.grad = g
        return f.sum()

    optimizer.step(closure)
    f, g = fun(params.detach())
    return params.detach()[0], float(f[0]), bool(g.norm() <= recipe.tolerance)


def train_logreg_sequential(
    data: TrainData, masks: np.ndarray, recipe: TrainConfig,
    checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """The trainer contract, one subset after another (loss NaN where not converged)."""
    K = len(masks)
    margins = np.empty((K, len(data.eval_y)), dtype=np.float32)
    losses = np.empty(K, dtype=np.float32)
    accuracy = np.empty(K, dtype=np.float32)
    snapshots: list[Snapshot] = []
    rows = set(checkpoints.rows) if checkpoints else set()
    d, C = data.in_dim, data.num_classes
    for k in range(K):
        params, loss, converged = train_logreg_one(data, masks[k], recipe)
        if k in rows:
            snapshots.append(logreg_snapshot(k, params, d, C, recipe))
        W, b = params[: d * C].view(d, C), params[d * C :]
        forward = lambda x, sl, W=W, b=b: (  # noqa: E731
            (x.reshape(len(x), -1).double() @ W + b).unsqueeze(0)
        )
        m, a = margins_and_accuracy(forward, data, 1)
        margins[k], losses[k], accuracy[k] = m[0], loss if converged else float("nan"), a[0]
    return margins, losses, accuracy, snapshots


def train_logreg(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, recipe: TrainConfig, trainer: str,
    checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """K subsets' optima: batched for ``trainer`` (``resources.trainer``) ``batched``, else
    one at a time."""
    if trainer == "batched":
        return train_logreg_batched(data, masks, seeds, recipe, checkpoints)
    return train_logreg_sequential(data, masks, recipe, checkpoints)
