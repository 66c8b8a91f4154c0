"""A small trained run (digits logreg, margins on its own training examples, checkpoints of
its first two models) for the registry's tests."""

from __future__ import annotations

import pytest

from datamodels.api import train
from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import SerialExecutor

TINY = {
    "name": "methods_tiny",
    "dataset": {"name": "digits", "limit_train": 30, "limit_test": 10, "eval_train": True},
    "model": {"arch": "logreg"},
    "train": {"weight_decay": 0.05, "tolerance": 1e-6},
    "plans": [{"name": "train", "kind": "alpha", "alpha": 0.5, "count": 12}],
    "checkpoints": {"plan": "train", "models": 2},
    "resources": {"models_per_task": 100},
}


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory):
    """(config, uri) of the trained run."""
    config = config_from_dict(TINY)
    uri = str(tmp_path_factory.mktemp("methods") / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    return config, uri
