"""The ``single_model`` plan (one seed, one batch order, dropped points weighted 0) and the
single-model LDS, with the metagradient as the estimator it was made for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodels.config import config_from_dict
from datamodels.errors import ConfigError
from datamodels.gradients.metagradient import metagradient_scores, replay_mlp
from datamodels.metrics.lds import single_model_lds
from datamodels.plans import masks_for, plan_models, training_weights
from datamodels.trainers.batched import train_mlp_batched
from datamodels.trainers.data import TrainData

PLANS = [
    {"name": "single", "kind": "single_model", "count": 4, "drops": [0.05, 0.25]},
    {"name": "train", "alpha": 0.5, "count": 3},
]


def test_plan_shares_one_seed_and_drops_exact_fractions():
    config = config_from_dict({"plans": PLANS})
    n = 200
    planned = plan_models(config, n)
    single = planned.take(np.flatnonzero(planned.plan == "single"))
    assert len(single) == 1 + 2 * 4
    assert len(set(single.seed.tolist())) == 1  # every mask, one seed
    masks = masks_for(config, single, n)
    assert masks[0].all()  # mask 0: the full set, the model the metagradient differentiates
    np.testing.assert_array_equal(n - masks.sum(1), [0] + [10] * 4 + [50] * 4)
    np.testing.assert_allclose(single.alpha, masks.mean(1))
    assert len({m.tobytes() for m in masks}) == len(masks)
    # pure function of (seed, plan, id)
    np.testing.assert_array_equal(masks, masks_for(config, single, n))
    order, weights = training_weights(config, planned, masks_for(config, planned, n))
    rows = planned.plan == "single"
    assert order[rows].all() and not order[~rows].all()
    np.testing.assert_array_equal(weights, masks_for(config, planned, n))


def test_plan_refuses_drops_outside_the_unit_interval():
    with pytest.raises(ConfigError, match="drops"):
        config_from_dict(
            {"plans": [{"name": "s", "kind": "single_model", "count": 2, "drops": [0.0, 0.5]}]}
        )


def test_single_model_lds_per_fraction_on_an_additive_game():
    rng = np.random.default_rng(0)
    n, T = 100, 5
    tau = rng.normal(size=(T, n))
    masks = np.ones((1 + 2 * 20, n), dtype=bool)
    for row in range(1, len(masks)):
        masks[row, rng.permutation(n)[: 5 if row <= 20 else 25]] = False
    margins = masks @ tau.T
    results = single_model_lds(tau, masks, margins, (0.05, 0.25, 0.5))
    assert set(results) == {0.05, 0.25}  # 0.5 has no models
    for result in results.values():
        assert result.value == pytest.approx(1.0) and result.n_subsets == 20


@pytest.fixture(scope="module")
def tiny_run():
    gen = torch.Generator().manual_seed(0)
    n, d, C, T = 80, 10, 3, 6
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = (x[:, :C].argmax(1) + (torch.rand(n, generator=gen) < 0.2).long()) % C
    tx = torch.randn(T, d, generator=gen, dtype=torch.float64)
    ty = tx[:, :C].argmax(1)
    data = TrainData(x, y, tx, ty, T, C, np.arange(n), "", torch.zeros(1, d), torch.ones(1, d))
    config = config_from_dict(
        {
            "model": {"arch": "mlp", "hidden": 8},
            "train": {"epochs": 4, "batch_size": 16, "lr": 0.1, "schedule": "linear"},
            "plans": [
                {"name": "single", "kind": "single_model", "count": 12, "drops": [0.05, 0.25]}
            ],
        }
    )
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    order, weights = training_weights(config, planned, masks)
    margins, *_ = train_mlp_batched(
        data, order, planned.seed, config.model, config.train, example_weights=weights
    )
    return data, config, planned, masks, margins


def test_weighted_models_are_the_replayed_weighted_runs(tiny_run):
    """A dropped point keeps its place in the full set's order: the trained model is the
    replay of the full run with that point's weight 0 (not a model trained on the subset)."""
    data, config, planned, masks, margins = tiny_run
    row = 3
    replayed = replay_mlp(
        data.train_x, data.train_y, np.ones(len(masks[row]), bool), int(planned.seed[row]),
        config.model, config.train, 3, masks[row].astype(float),
    )
    from datamodels.trainers.outcome import margins_from_logits

    logits = replayed.model.logits_fn(replayed.final, data.eval_x).unsqueeze(0)
    expected = margins_from_logits(logits, data.eval_y)[0].numpy()
    np.testing.assert_allclose(margins[row], expected, atol=1e-5)


def test_metagradient_ranks_single_model_drops(tiny_run):
    """On the single-model plan the metagradient of the full run predicts the drops:
    single-model LDS ≥ 0.9 at 5% (it is the first-order term of an exact expansion)."""
    data, config, planned, masks, margins = tiny_run
    run = replay_mlp(
        data.train_x, data.train_y, masks[0], int(planned.seed[0]), config.model, config.train, 3
    )
    scores = metagradient_scores(run, data.train_x, data.train_y, data.eval_x, data.eval_y)
    results = single_model_lds(scores.numpy(), masks, margins, (0.05, 0.25))
    print({f: round(r.value, 3) for f, r in results.items()})
    assert results[0.05].value >= 0.9
    assert results[0.25].value >= 0.7


def test_evaluate_reports_single_model_lds_per_fraction(tmp_path):
    from datamodels.api import estimate, evaluate, train
    from datamodels.orchestrate.executor import SerialExecutor

    config = config_from_dict(
        {
            "dataset": {"name": "digits", "limit_train": 60, "limit_test": 10},
            "model": {"arch": "mlp", "hidden": 4},
            "train": {"epochs": 2, "batch_size": 16},
            "plans": [
                {"name": "train", "alpha": 0.5, "count": 12},
                {"name": "eval", "alpha": 0.5, "count": 4},
                {"name": "single", "kind": "single_model", "count": 3, "drops": [0.1, 0.5]},
            ],
        }
    )
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    estimate(config, uri, "downsampling", executor=SerialExecutor(), show_progress=False)
    table = evaluate(config, uri)
    metrics = set(table.loc[table["method"] == "downsampling", "metric"])
    assert {"lds", "lds_single_0.1", "lds_single_0.5"} <= metrics


def test_the_driver_trains_single_model_plans_with_weights(tmp_path):
    """Through ``train``: every single_model model is the full set's run with its dropped
    points weighted 0 (what the metagradient differentiates), its mask the kept set."""
    from datamodels.api import train
    from datamodels.orchestrate.context import Context
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.store import Run

    config = config_from_dict(
        {
            "dataset": {"name": "digits", "limit_train": 60, "limit_test": 10},
            "model": {"arch": "mlp", "hidden": 4},
            "train": {"epochs": 2, "batch_size": 16},
            "plans": [
                {"name": "single", "kind": "single_model", "count": 2, "drops": [0.1, 0.5]}
            ],
            "resources": {"models_per_task": 3},
        }
    )
    uri = str(tmp_path / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    run = Run(uri)
    data = Context().data(run, config)
    planned = plan_models(config, data.n_train)
    masks = masks_for(config, planned, data.n_train)
    order, weights = training_weights(config, planned, masks)
    expected, *_ = train_mlp_batched(
        data, order, planned.seed, config.model, config.train, example_weights=weights
    )
    order_of = np.argsort(run.model_ids())
    assert np.array_equal(run.model_ids()[order_of], np.sort(planned.model_id))
    rows = order_of[np.searchsorted(run.model_ids()[order_of], planned.model_id)]
    np.testing.assert_array_equal(run.masks()[rows], masks)
    np.testing.assert_allclose(run.margins()[rows], expected, atol=1e-5)
    # not the models trained on the kept subsets alone
    alone, *_ = train_mlp_batched(data, masks, planned.seed, config.model, config.train)
    assert np.abs(alone[1:] - expected[1:]).max() > 1e-3


def test_single_model_plans_need_the_batched_mlp_trainer():
    from datamodels.trainers.api import train_batch

    with pytest.raises(ConfigError, match="single_model plans .* batched mlp trainer only"):
        config_from_dict({
            "model": {"arch": "logreg"},
            "plans": [{"name": "s", "kind": "single_model", "count": 2, "drops": [0.1]}],
        })
    config = config_from_dict({"model": {"arch": "logreg"}})
    data = TrainData(
        torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), torch.zeros(2, 2), torch.tensor([0, 1]),
        2, 2, np.arange(4), "", torch.zeros(1, 2), torch.ones(1, 2),
    )
    with pytest.raises(ConfigError, match="single_model plans .* batched mlp trainer only"):
        train_batch(np.ones((1, 4), bool), np.array([0]), data, config,
                    example_weights=np.ones((1, 4)))
