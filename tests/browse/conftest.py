"""A small finished digits run for the serve tests (serial executor, a few seconds): flipped
labels, datamodels and downsampling scores (self scores too), a removal plan, evaluation."""

from __future__ import annotations

import pytest

from tests.conftest import SMALL_DIGITS

SERVE_CONFIG = {
    **SMALL_DIGITS,
    "name": "digits_serve",
    "dataset": {"name": "digits", "flip_fraction": 0.1},
    "train": {"epochs": 2, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 24},
        {"name": "eval", "alpha": 0.5, "count": 6},
        {"name": "removal", "kind": "removal", "count": 3, "ks": [5], "seeds": 2},
    ],
    "fit": {"n_lambdas": 3, "eps": 0.05, "tol": 1e-3},
}


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory) -> str:
    """The run directory, built once per session."""
    import datamodels as dm
    from datamodels.orchestrate.executor import SerialExecutor

    out = str(tmp_path_factory.mktemp("serve") / "run")
    config = dm.load_config(SERVE_CONFIG)
    dm.train(config, out, executor=SerialExecutor(), show_progress=False)
    dm.fit(out, show_progress=False)
    dm.estimate(out, "downsampling", executor=SerialExecutor(), show_progress=False)
    dm.removal(out, executor=SerialExecutor(), show_progress=False)
    dm.evaluate(out)
    return out
