"""Trainer contract: batched == one-at-a-time for the same seeds, FFCV paths equivalent,
logreg converged and deterministic, non-finite models flagged."""

import dataclasses

import numpy as np
import pytest
import torch

from datamodels.config import config_from_dict
from datamodels.plans import masks_for, plan_models
from datamodels.trainers.api import train_batch
from tests.conftest import SMALL_DIGITS


def _with(config, *overrides):
    return config_from_dict(config.model_dump(mode="json"), list(overrides))


def _models(config, data, k, start=0):
    planned = plan_models(config, data.n_train).take(np.arange(start, start + k))
    return masks_for(config, planned, data.n_train), planned.seed


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_batched_mlp_matches_one_at_a_time(digits_data):
    config, data = digits_data
    masks, seeds = _models(config, data, 6)
    fast = train_batch(masks, seeds, data, config)
    slow = train_batch(masks, seeds, data, _with(config, "resources.trainer=sequential"))
    assert not fast.failed.any() and not slow.failed.any()
    # same seeds, same minibatches, same init: the models agree up to float rounding
    np.testing.assert_allclose(fast.margins, slow.margins, atol=2e-3)
    np.testing.assert_allclose(fast.eval_accuracy, slow.eval_accuracy, atol=1 / data.n_test + 1e-6)
    assert fast.eval_accuracy.mean() > 0.9


def test_batched_models_do_not_interact(digits_data):
    config, data = digits_data
    masks, seeds = _models(config, data, 5)
    together = train_batch(masks, seeds, data, config).margins
    alone = train_batch(masks[2:3], seeds[2:3], data, config).margins
    np.testing.assert_allclose(together[2], alone[0], atol=1e-4)
    again = train_batch(masks, seeds, data, config).margins
    np.testing.assert_array_equal(together, again)  # deterministic on CPU


def test_ffcv_per_model_loader_is_statistically_equivalent(digits_data):
    config, data = digits_data
    masks, seeds = _models(config, data, 6)
    resident = train_batch(masks, seeds, data, config)
    per_model = train_batch(masks, seeds, data, config, loader="per_model")
    assert not per_model.failed.any()
    # different shuffles, so not identical; equally good and strongly correlated margins
    assert abs(resident.eval_accuracy.mean() - per_model.eval_accuracy.mean()) < 0.02
    corr = np.corrcoef(resident.margins.ravel(), per_model.margins.ravel())[0, 1]
    assert corr > 0.9


@pytest.mark.parametrize("trainer", ["batched", "sequential"])
def test_nonfinite_models_are_flagged_not_returned(digits_data, trainer):
    """A NaN in one training example fails only the model that trains on it; the others are
    returned exactly as they are trained on clean data."""
    config, data = digits_data
    config = _with(config, f"resources.trainer={trainer}")
    masks, seeds = _models(config, data, 4)
    # The batched trainer pads a short batch with the model's excluded examples (weight 0) in
    # index order, so the last example is never padding: only model 1 ever reads it.
    bad = data.n_train - 1
    masks[:, bad] = False
    masks[1, bad] = True
    faulty = dataclasses.replace(data, train_x=data.train_x.clone())
    faulty.train_x[bad] = float("nan")
    out = train_batch(masks, seeds, faulty, config)
    assert out.failed.tolist() == [False, True, False, False]
    assert not np.isfinite(out.margins[1]).all()
    clean = train_batch(masks[[0, 2, 3]], seeds[[0, 2, 3]], data, config)
    assert not clean.failed.any()
    np.testing.assert_allclose(out.margins[[0, 2, 3]], clean.margins, atol=1e-4)


def test_logreg_converges_to_the_unique_optimum(digits_data):
    _, data = digits_data
    config = config_from_dict(
        {**SMALL_DIGITS, "model": {"arch": "logreg"}, "train": {"weight_decay": 0.01}}
    )
    masks, seeds = _models(config, data, 4)
    masks[3] = False  # empty subset: the all-zero model
    batched = train_batch(masks, seeds, data, config)
    assert not batched.failed.any()
    np.testing.assert_array_equal(batched.margins[3], 0.0)
    sequential = _with(config, "resources.trainer=sequential")
    reference = train_batch(masks[:3], seeds[:3], data, sequential)
    np.testing.assert_allclose(batched.margins[:3], reference.margins, atol=2e-3)
    # seeds do not matter for a convex model trained to convergence
    reseeded = train_batch(masks[:3], seeds[:3] + 17, data, config)
    np.testing.assert_allclose(reseeded.margins, batched.margins[:3], atol=1e-6)


def test_resnet9_trains_on_images(tmp_path, cifar_archive):
    from datamodels import api
    from datamodels.orchestrate.context import Context
    from datamodels.store import Run

    config = config_from_dict(
        {
            "dataset": {"name": "cifar10", "path": str(cifar_archive)},
            "model": {"arch": "resnet9", "width": 8},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "schedule": "triangle"},
            "plans": [{"name": "train", "count": 2}],
        }
    )
    out = str(tmp_path / "run")
    api.prepare(config, out)
    data = Context().data(Run(out), config)
    assert data.train_x.shape == (100, 3, 32, 32)
    masks, seeds = _models(config, data, 2)
    out = train_batch(masks, seeds, data, config)
    assert out.margins.shape == (2, 120) and np.isfinite(out.margins).all() and not out.failed.any()
    out2 = train_batch(masks, seeds, data, config, loader="per_model")
    assert np.isfinite(out2.margins).all()
