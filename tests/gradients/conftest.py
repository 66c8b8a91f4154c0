"""Shared ground truth: a converged logreg on a digits subset and its leave-one-out retrains."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

N_TRAIN = 300  # n > P/2 keeps leverage small enough for a first-order method (P = 650)
N_TARGETS = 20
N_LEFT_OUT = 30
WEIGHT_DECAY = 0.05


@dataclass
class LogregCase:
    model: object  # FunctionalModel
    train_x: torch.Tensor  # float64[n, 64]
    train_y: torch.Tensor
    target_x: torch.Tensor  # float64[T, 64]
    target_y: torch.Tensor
    loo: np.ndarray  # float64[T, N_LEFT_OUT]: margin with all − margin without point i
    margins: np.ndarray  # float64[T]: the trainer's margins with all points
    data: object  # the TrainData subset


@contextlib.contextmanager
def single_thread():
    """One intra-op thread: these are many small ops, and on a shared 2-core box two spinning
    OpenMP threads were measured 25x slower per HVP than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _single_thread():
    with single_thread():
        yield


def subset(data, n_train: int, n_targets: int):
    return dataclasses.replace(
        data, train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
        eval_x=data.eval_x[:n_targets], eval_y=data.eval_y[:n_targets], n_test=n_targets,
        train_index=data.train_index[:n_train],
    )


def logreg_config(weight_decay: float):
    from datamodels.config import config_from_dict

    return config_from_dict(
        {
            "model": {"arch": "logreg"},
            "train": {"weight_decay": weight_decay, "tolerance": 1e-8, "max_iter": 5000},
        }
    )


@pytest.fixture(scope="session")
def logreg_case(digits_data) -> LogregCase:
    from datamodels.gradients import fit_logreg, logreg_model
    from datamodels.trainers.api import train_batch

    _, data = digits_data
    sub = subset(data, N_TRAIN, N_TARGETS)
    masks = np.ones((N_LEFT_OUT + 1, N_TRAIN), dtype=bool)
    masks[np.arange(1, N_LEFT_OUT + 1), np.arange(N_LEFT_OUT)] = False
    with single_thread():
        seeds = np.zeros(N_LEFT_OUT + 1, dtype=np.int64)
        outcome = train_batch(masks, seeds, sub, logreg_config(WEIGHT_DECAY))
    assert not outcome.failed.any()
    margins = outcome.margins.astype(np.float64)
    loo = (margins[0][None, :] - margins[1:]).T
    params = fit_logreg(sub.train_x, sub.train_y, data.num_classes, WEIGHT_DECAY)
    model = logreg_model(params, data.in_dim, data.num_classes, WEIGHT_DECAY)
    return LogregCase(
        model, sub.train_x.double(), sub.train_y, sub.eval_x.double(), sub.eval_y, loo,
        margins[0], sub,
    )


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])
