"""Influence functions on a ``logreg`` trained without one of its classes.

The training set holds digits 0 and 1 only, the model has 3 classes and the targets include
2s. Without a bias penalty the absent class's bias had no optimum (it ran to about −20,
wherever the solver stopped), H was singular along it, and margin influence did not predict
leave-one-out retraining (Pearson 0.17 overall, 0.08 on the 2s). With the trainer's
centred-bias penalty, ``gradients.model`` carries the same objective, the optimum is finite
and the influence is first-order exact again (observed 0.988 on all targets and on the 2s).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from datamodels.gradients import fit_logreg, influence_scores, logreg_model
from datamodels.gradients.grads import exact_hessian
from datamodels.gradients.model import objective
from datamodels.trainers.api import train_batch
from tests.gradients.conftest import pearson
from tests.trainers.digits_arrays import digits_data, logreg_config

WEIGHT_DECAY = 0.05
N = 60
C = 3


def _two_class_training_set():
    data = digits_data(200, 30, C)
    keep = np.flatnonzero(data.train_y.numpy() < 2)[:N]  # class 2 absent from training
    return dataclasses.replace(
        data, train_x=data.train_x[keep], train_y=data.train_y[keep], train_index=keep
    )


def test_margin_influence_predicts_leave_one_out_with_a_class_missing():
    data = _two_class_training_set()
    assert set(data.train_y.tolist()) == {0, 1} and (data.eval_y == 2).sum() >= 5
    masks = np.ones((N + 1, N), dtype=bool)
    masks[np.arange(1, N + 1), np.arange(N)] = False
    outcome = train_batch(masks, np.zeros(N + 1, np.int64), data, logreg_config(WEIGHT_DECAY, 1e-8))
    assert not outcome.failed.any()
    margins = outcome.margins.astype(np.float64)
    loo = margins[0][:, None] - margins[1:].T  # [T, N]

    x, y = data.train_x.double(), data.train_y
    model = logreg_model(fit_logreg(x, y, C, WEIGHT_DECAY), data.in_dim, C, WEIGHT_DECAY)
    # gradients.model's J is the trainer's objective: stationary at the trainer's optimum.
    grad = torch.func.grad(lambda p: objective(model, p, x, y))(model.params)
    assert float(grad.norm()) < 1e-7
    assert float(model.params[-C:].abs().max()) < 10.0  # finite bias (about 4 for class 2)
    # H is singular along the common bias shift only (the model's null direction).
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert abs(float(eigenvalues[0])) < 1e-12 and float(eigenvalues[1]) > 1e-4

    predicted = influence_scores(model, x, y, data.eval_x.double(), data.eval_y).numpy()
    absent = (data.eval_y == 2).numpy()
    assert pearson(predicted, loo) > 0.95
    assert pearson(predicted[absent], loo[absent]) > 0.95
