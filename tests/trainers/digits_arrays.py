"""Small digits problems as ``TrainData`` built straight from arrays (no beton, no Ray)."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.config import Config, config_from_dict
from datamodels.trainers.data import TrainData


def digits_data(n_train: int, n_eval: int, classes: int) -> TrainData:
    """The first ``n_train`` digits of classes ``0 .. classes−1`` (scikit-learn order) for
    training and the next ``n_eval`` for evaluation, standardised as the trainer's data are
    (train statistics, constant features left at 0)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(digits.target < classes)
    x = (digits.data[keep] / 16.0).astype(np.float32)
    y = digits.target[keep].astype(np.int64)
    train, held = slice(0, n_train), slice(n_train, n_train + n_eval)
    mean, std = x[train].mean(0), x[train].std(0)
    std = np.where(std < 1e-6, 1.0, std)

    def features(rows: slice) -> torch.Tensor:
        return torch.from_numpy(((x[rows] - mean) / std).astype(np.float32))

    return TrainData(
        train_x=features(train), train_y=torch.from_numpy(y[train]),
        eval_x=features(held), eval_y=torch.from_numpy(y[held]), n_test=n_eval,
        num_classes=classes, train_index=np.arange(n_train), beton_path="",
        mean=torch.from_numpy(mean), std=torch.from_numpy(std),
    )


def logreg_config(weight_decay: float, tolerance: float, **resources) -> Config:
    return config_from_dict(
        {
            "model": {"arch": "logreg"},
            "train": {"weight_decay": weight_decay, "tolerance": tolerance, "max_iter": 2000},
            "resources": resources,
        }
    )


def all_subsets(n: int) -> np.ndarray:
    """bool[2^n, n]: row c is the subset with bit code c (bit i set = point i included)."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
