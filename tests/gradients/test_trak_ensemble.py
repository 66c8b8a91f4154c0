"""TRAK's relative damping and checkpoint ensembling, as the ``estimate`` stage computes them
(``checkpointed.trak_values``), against the plain function ``trak_scores`` model by model."""

from __future__ import annotations

import torch

from datamodels.config import config_from_dict
from datamodels.gradients import fit_logreg, logreg_model, trak_scores
from datamodels.gradients.checkpointed import CHECKPOINT_SEED_STRIDE, trak_values
from datamodels.gradients.projection import Projection
from datamodels.gradients.trak import one_minus_p, trak_features


def checkpoints():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (60,), generator=gen)
    last = logreg_model(fit_logreg(x, y, 3, 0.1), 3, 3, 0.1)
    history = [(last.params * s, 0.1) for s in (0.5, 0.8, 1.0)]  # epochs, the last last
    return last, history, x, y


def test_relative_damping_is_the_mean_diagonal_of_the_feature_gram():
    model, _, x, y = checkpoints()
    phi = trak_features(model, x, y, Projection(model.num_params, 5, 2))
    mean_diag = float((phi * phi).sum()) / 5
    relative = trak_scores([model], x, y, x[:4], y[:4], proj_dim=5, seed=2, damping=0.7,
                           relative_damping=True)
    absolute = trak_scores([model], x, y, x[:4], y[:4], proj_dim=5, seed=2,
                           damping=0.7 * mean_diag)
    torch.testing.assert_close(relative, absolute)
    undamped = trak_scores([model], x, y, x[:4], y[:4], proj_dim=5, seed=2)
    assert (relative - undamped).abs().max() > 1e-3 * undamped.abs().max()


def test_the_stage_ensembles_each_models_checkpoints_with_their_own_projections():
    model, history, x, y = checkpoints()
    config = config_from_dict({"seed": 3}, ["gradients.proj_dim=5", "gradients.trak_damping=0.5"])
    assert config.gradients.trak_checkpoints is None and config.gradients.trak_damping_relative
    cache: dict = {}
    cached = lambda key, make: cache.setdefault(key, make()) if key not in cache else cache[key]  # noqa: E731
    slot = 2
    args = (model, x, y)
    got = trak_values(config, cached, ("m",), *args, "scores", slice(None), slot, x[:4], y[:4],
                      history)
    q = trak_values(config, cached, ("m",), *args, "reweight", slice(None), slot, None, None,
                    history)
    ckpts = [model.with_params(p) for p, _ in reversed(history)]
    singles = [
        trak_scores([c], x, y, x[:4], y[:4], proj_dim=5, damping=0.5, relative_damping=True,
                    seed=3 + slot + CHECKPOINT_SEED_STRIDE * j) / one_minus_p(c, x, y)
        for j, c in enumerate(ckpts)
    ]
    torch.testing.assert_close(got, sum(singles) / 3)
    torch.testing.assert_close(q, sum(one_minus_p(c, x, y) for c in ckpts) / 3)

    # the last two checkpoints only; one: the last alone, the projection seed of before
    two = config_from_dict({"seed": 3}, ["gradients.proj_dim=5", "gradients.trak_damping=0.5",
                                         "gradients.trak_checkpoints=2"])
    got2 = trak_values(two, cached, ("m",), *args, "scores", slice(None), slot, x[:4], y[:4],
                       history)
    torch.testing.assert_close(got2, sum(singles[:2]) / 2)
    one = config_from_dict({"seed": 3}, ["gradients.proj_dim=5", "gradients.trak_damping=0",
                                         "gradients.trak_checkpoints=1"])
    got1 = trak_values(one, cached, ("m",), *args, "scores", slice(None), slot, x[:4], y[:4],
                       history)
    plain = trak_scores([model], x, y, x[:4], y[:4], proj_dim=5, seed=3 + slot)
    torch.testing.assert_close(got1, plain / one_minus_p(model, x, y))
