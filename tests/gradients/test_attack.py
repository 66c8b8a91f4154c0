"""Koh & Liang §5.2: one perturbed training input flips a retrained logreg's prediction."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.gradients import craft_attack, fit_logreg, influence_pert_scores, logreg_model
from datamodels.gradients.grads import per_example_outputs
from datamodels.gradients.influence_pert import most_influential_point
from datamodels.trainers.api import train_batch
from tests.gradients.conftest import logreg_config, single_thread, subset

N_TRAIN, WEIGHT_DECAY, BUDGET = 60, 0.05, 1.0


def test_pert_is_the_gradient_of_the_retrained_margin(digits_data):
    _, data = digits_data
    x, y = data.train_x[:N_TRAIN].double(), data.train_y[:N_TRAIN]
    tx, ty = data.eval_x[:2].double(), data.eval_y[:2]
    C, d = data.num_classes, data.in_dim
    refit = lambda xs: logreg_model(fit_logreg(xs, y, C, WEIGHT_DECAY), d, C, WEIGHT_DECAY)  # noqa: E731
    model = refit(x)
    pert = influence_pert_scores(model, x, y, tx, ty, points=torch.tensor([5]))  # [2, 1, d]
    direction = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-3
    moved = x.clone()
    moved[5] += eps * direction
    after = per_example_outputs(refit(moved), tx, ty, "margin")
    change = after - per_example_outputs(model, tx, ty, "margin")
    predicted = eps * (pert[:, 0] @ direction)
    torch.testing.assert_close(change, predicted, rtol=0.1, atol=1e-7)


def test_attack_flips_a_retrained_prediction(digits_data):
    config, data = digits_data
    sub = subset(data, N_TRAIN, 100)
    x, y = sub.train_x.double(), sub.train_y
    C, d = data.num_classes, data.in_dim
    refit = lambda xs: logreg_model(fit_logreg(xs, y, C, WEIGHT_DECAY), d, C, WEIGHT_DECAY)  # noqa: E731
    model = refit(x)
    margins = per_example_outputs(model, sub.eval_x.double(), sub.eval_y, "margin")
    target = int(torch.where(margins > 0.5, margins, torch.inf).argmin())  # correct, not marginal
    tx, ty = sub.eval_x[target].double(), sub.eval_y[target]
    pert = influence_pert_scores(model, x, y, tx.unsqueeze(0), ty.reshape(1))[0]
    point = most_influential_point(pert)
    result = craft_attack(model, x, y, tx, ty, point=point, budget=BUDGET, refit=refit, max_iter=20)
    margins_path = np.round(result.margins, 3)
    print(f"attack on target {target} via train point {point}: margins {margins_path}")
    assert result.flipped
    assert float(result.delta.abs().max()) <= BUDGET + 1e-12
    # ground truth: the project's trainer, retrained on the perturbed training set
    attacked = x.clone()
    attacked[point] = result.perturbed_x
    poisoned = subset(data, N_TRAIN, 100)
    poisoned.train_x = attacked.float()
    with single_thread():
        everything, seed = np.ones((1, N_TRAIN), bool), np.zeros(1, np.int64)
        logreg = logreg_config(WEIGHT_DECAY)
        clean = train_batch(everything, seed, sub, logreg)
        after = train_batch(everything, seed, poisoned, logreg)
    assert clean.margins[0, target] > 0 > after.margins[0, target]


def _fitted(data, x, y):
    """The logreg optimum on ``x``, ``y`` as a ``FunctionalModel``."""
    C = data.num_classes
    return logreg_model(fit_logreg(x, y, C, WEIGHT_DECAY), data.in_dim, C, WEIGHT_DECAY)


def test_pert_self_scores_are_the_diagonal_of_pert(digits_data):
    from datamodels.gradients.influence_pert import influence_pert_self_scores

    _, data = digits_data
    x, y = data.train_x[:N_TRAIN].double(), data.train_y[:N_TRAIN]
    model = _fitted(data, x, y)
    points = torch.arange(5, 12)
    # full: [m, m, d]
    full = influence_pert_scores(model, x, y, x[points], y[points], utility="loss", points=points)
    diagonal = full.diagonal(dim1=0, dim2=1).movedim(-1, 0)
    own = influence_pert_self_scores(model, x, y, x[points], y[points], utility="loss")
    torch.testing.assert_close(own, diagonal, rtol=1e-8, atol=1e-12)
    assert own.abs().max() > 0


def test_pert_in_memory_bounded_chunks_agrees(digits_data):
    """Points split into chunks (a small ``chunk_elements``) give the same pert, for every
    target."""
    _, data = digits_data
    x, y = data.train_x[:N_TRAIN].double(), data.train_y[:N_TRAIN]
    model = _fitted(data, x, y)
    tx, ty = data.eval_x[:80].double(), data.eval_y[:80]
    wide = influence_pert_scores(model, x, y, tx, ty, chunk_elements=200_000)  # 3 points per chunk
    narrow = influence_pert_scores(model, x, y, tx[:3], ty[:3])  # one chunk
    assert wide.shape == (80, N_TRAIN, data.in_dim)
    torch.testing.assert_close(wide[:3], narrow, rtol=1e-8, atol=1e-12)
