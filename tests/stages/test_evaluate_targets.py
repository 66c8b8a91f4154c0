"""The evaluate stage averages every method's LDS over the same targets: a score row that
predicts a constant (an all-zero LASSO datamodel) counts as 0, it is not dropped."""

from __future__ import annotations

import json

import numpy as np
import pytest

import datamodels as dm
from tests.conftest import SMALL_DIGITS

TINY = {
    **SMALL_DIGITS,
    "train": {"epochs": 2, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 8},
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
}


def test_zero_rows_count_as_zero_over_the_same_targets(tmp_path):
    from datamodels.orchestrate.executor import SerialExecutor

    config = dm.load_config(TINY)
    out = str(tmp_path / "run")
    dm.train(config, out, executor=SerialExecutor(), show_progress=False)
    run = dm.Run(out)
    n_eval, n_train = run.n_eval, run.n_train
    targets = np.arange(n_eval)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(n_eval, n_train)).astype(np.float32)
    run.write_scores("dense", targets, scores)
    zeroed = scores.copy()
    zeroed[::2] = 0.0  # every other target: an all-zero datamodel
    run.write_scores("sparse", targets, zeroed)

    frame = dm.evaluate(out)
    lds = frame[frame["metric"] == "lds"].set_index("method")
    assert lds.loc["dense", "n_targets"] == lds.loc["sparse", "n_targets"]
    assert json.loads(lds.loc["dense", "details"])["n_constant_targets"] == 0
    # the known answer: the sparse method's mean is the dense one's per-target values with
    # the zeroed targets set to 0, over the same targets
    from datamodels.metrics.lds import average_replicates
    from datamodels.metrics.lds import lds as lds_of

    masks, margins = run.masks_and_margins(plan="eval")
    subsets, true = average_replicates(masks, margins)
    dense = lds_of(scores, subsets, true[:, targets]).per_target
    expected = np.where(np.arange(n_eval) % 2 == 0, 0.0, dense)
    assert lds.loc["sparse", "value"] == pytest.approx(expected[np.isfinite(dense)].mean())
    details = json.loads(lds.loc["sparse", "details"])
    assert details["n_constant_targets"] == int(np.isfinite(dense)[::2].sum()) > 0
