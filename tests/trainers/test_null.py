"""The null trainer: deterministic pseudo-margins from (seed, mask) with a planted datamodel
that a fit recovers, and no dataset decoding."""

from __future__ import annotations

import numpy as np

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.orchestrate.context import Context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run, verify
from datamodels.trainers.api import train_batch
from datamodels.trainers.null import (
    NOISE,
    NullData,
    null_margins,
    planted_datamodel,
    planted_weights,
)

NULL_DIGITS = {
    "name": "digits_null",
    "dataset": {"name": "digits", "limit_train": 60, "limit_test": 16, "eval_train": False},
    "model": {"arch": "null"},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 600},
        {"name": "eval", "alpha": 0.5, "count": 40},
    ],
    "resources": {"models_per_task": 200},
}


def test_margins_are_a_deterministic_function_of_seed_and_mask():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 300)) < 0.5
    seeds = np.arange(5, dtype=np.int64) * 7919
    config = config_from_dict({**NULL_DIGITS})
    outcome = train_batch(masks, seeds, NullData(300, 40), config)
    margins, loss, accuracy = outcome.margins, outcome.train_loss, outcome.eval_accuracy
    assert margins.shape == (5, 40) and margins.dtype == np.float32
    np.testing.assert_array_equal(margins, null_margins(masks, seeds, 40, config.seed))
    # one model alone gives its own row, whatever the batch (no leak across the batch)
    np.testing.assert_array_equal(margins[3], null_margins(masks[3:4], seeds[3:4], 40, 0)[0])
    # the expected margin is the planted linear function; the rest is the seed's noise
    _, _, bias = planted_datamodel(config.seed, 300, 40)
    linear = bias + masks @ planted_weights(config.seed, 300, 40).T
    assert np.abs(margins - linear).max() < 6 * NOISE
    assert not np.array_equal(margins[0], null_margins(masks[:1], seeds[1:2], 40, 0)[0])
    assert (loss == 0).all() and accuracy.shape == (5,) and not outcome.failed.any()


def test_a_fit_on_a_null_run_recovers_the_planted_weights(tmp_path, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("the null trainer decoded the dataset")

    monkeypatch.setattr(Context, "data", no_decoding)
    config = config_from_dict(NULL_DIGITS)
    out = str(tmp_path / "run")
    summary = api.train(config, out, executor=SerialExecutor(), show_progress=False)
    assert summary.trained == 640
    run = Run(out)
    assert verify(run) == []
    api.fit(config, out, show_progress=False)
    n_train, n_eval = run.sizes()
    planted = planted_weights(config.seed, n_train, n_eval)
    weights = run.weights()
    fitted = np.zeros_like(planted)
    fitted[weights["target"], weights["train_position"]] = weights["weight"]
    targets = np.unique(weights["target"])
    assert len(targets) == 16
    error = np.abs(fitted[targets] - planted[targets])
    # LASSO shrinks each weight by about lambda; sampling error is ~ NOISE / sqrt(m/4) = 0.01
    assert error.max() < 0.15, error.max()
    assert np.corrcoef(fitted[targets].ravel(), planted[targets].ravel())[0, 1] > 0.99
