"""The ``paired_loo`` plan: each replicate's full model and models without a point share one
seed and one batch order, the point weighted 0; the LOO effect is the mean paired difference,
checked against the runs retrained independently (the float64 replay of the same recipe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels import estimators as est
from datamodels.config import config_from_dict
from datamodels.errors import ConfigError
from datamodels.estimators.loo import left_out_points, replicate_keys
from datamodels.gradients.metagradient import replay_mlp
from datamodels.plans import masks_for, plan_models, training_weights
from datamodels.trainers.batched import train_mlp_batched
from datamodels.trainers.data import TrainData
from datamodels.trainers.outcome import margins_from_logits

POINTS = [3, 17, 40]
SEEDS = 3


def _config(kind: str = "paired_loo", arch: str = "mlp"):
    return config_from_dict(
        {
            "model": {"arch": arch, "hidden": 8},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.1, "schedule": "linear"},
            "plans": [
                {"name": "train", "alpha": 0.5, "count": 2},
                {"name": "loo", "kind": kind, "points": POINTS, "seeds": SEEDS},
            ],
        }
    )


def test_plan_pairs_every_mask_of_a_replicate_with_its_full_model():
    config, n = _config(), 60
    planned = plan_models(config, n)
    rows = np.flatnonzero(planned.plan == "loo")
    loo = planned.take(rows)
    assert len(loo) == (1 + len(POINTS)) * SEEDS
    seeds = loo.seed.reshape(1 + len(POINTS), SEEDS)
    assert (seeds == seeds[0]).all()  # mask j, replicate r: mask 0's seed of replicate r
    assert len(set(seeds[0].tolist())) == SEEDS  # replicates differ
    masks = masks_for(config, planned, n)
    np.testing.assert_array_equal(left_out_points(masks[rows]), np.repeat([-1, *POINTS], SEEDS))
    order, weights = training_weights(config, planned, masks)
    assert order[rows].all()  # batches drawn from the full set
    np.testing.assert_array_equal(weights[rows], masks[rows])  # the left-out point weighted 0
    # the unpaired kind: the same masks, a seed of its own per model
    unpaired = plan_models(_config("loo"), n)
    unpaired = unpaired.take(np.flatnonzero(unpaired.plan == "loo"))
    assert len(set(unpaired.seed.tolist())) == len(unpaired)
    np.testing.assert_array_equal(masks_for(_config("loo"), plan_models(_config("loo"), n), n),
                                  masks)


def test_paired_plan_needs_the_batched_mlp_trainer():
    with pytest.raises(ConfigError, match="paired_loo plans"):
        _config(arch="logreg")


@pytest.fixture(scope="module")
def paired_run():
    gen = torch.Generator().manual_seed(1)
    n, d, C, T = 60, 6, 3, 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = (x[:, :C].argmax(1) + (torch.rand(n, generator=gen) < 0.2).long()) % C
    tx = torch.randn(T, d, generator=gen, dtype=torch.float64)
    ty = tx[:, :C].argmax(1)
    data = TrainData(x, y, tx, ty, T, C, np.arange(n), "", torch.zeros(1, d), torch.ones(1, d))
    config = _config()
    planned = plan_models(config, n)
    planned = planned.take(np.flatnonzero(planned.plan == "loo"))
    masks = masks_for(config, planned, n)
    order, weights = training_weights(config, planned, masks)
    margins, *_ = train_mlp_batched(
        data, order, planned.seed, config.model, config.train, example_weights=weights
    )
    return data, config, planned, masks, margins


def _replayed_margins(data, config, seed: int, weights: np.ndarray) -> np.ndarray:
    """The model retrained on its own by the float64 replay (same init, order, recipe)."""
    trajectory = replay_mlp(
        data.train_x, data.train_y, np.ones(len(weights), bool), seed, config.model,
        config.train, data.num_classes, weights,
    )
    logits = trajectory.model.logits_fn(trajectory.final, data.eval_x).unsqueeze(0)
    return margins_from_logits(logits, data.eval_y)[0].numpy()


def test_paired_loo_is_the_mean_of_independently_retrained_differences(paired_run):
    data, config, planned, masks, margins = paired_run
    n = data.n_train
    seeds = planned.seed[planned.mask_index == 0]
    expected = np.empty((SEEDS, len(POINTS), data.n_test))
    for r, seed in enumerate(seeds):
        full = _replayed_margins(data, config, int(seed), np.ones(n))
        for p, point in enumerate(POINTS):
            without = np.ones(n)
            without[point] = 0.0
            expected[r, p] = full - _replayed_margins(data, config, int(seed), without)
    keys = replicate_keys(planned.model_id, planned.mask_index, SEEDS)
    left_out = left_out_points(masks)
    _, d = est.loo_differences(left_out, keys, margins, np.array(POINTS), n)
    np.testing.assert_allclose(d, expected, atol=1e-6)  # margins come back as float32
    scores = est.paired_loo(left_out, keys, margins, n)
    np.testing.assert_allclose(scores.values[:, POINTS], expected.mean(0).T, atol=1e-6)
    se = expected.std(0, ddof=1) / np.sqrt(SEEDS)
    np.testing.assert_allclose(scores.stderr[:, POINTS], se.T, atol=1e-6)
    others = np.setdiff1d(np.arange(n), POINTS)
    assert (scores.values[:, others] == 0).all() and np.isinf(scores.stderr[:, others]).all()
