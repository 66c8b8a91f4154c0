"""Code paths for run directories on object stores, where no file has a local path."""

from __future__ import annotations

import numpy as np

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run


def test_knn_shapley_reads_the_beton_without_a_local_path(tmp_path, monkeypatch):
    config = config_from_dict(
        {
            "dataset": {"name": "digits", "limit_train": 60, "limit_test": 20},
            "plans": [{"name": "train", "count": 4}, {"name": "eval", "count": 3}],
        }
    )
    out = str(tmp_path / "run")
    api.prepare(config, out)
    expected_rows = Run(out).n_eval - Run(out).n_train  # the test targets
    monkeypatch.setattr(Run, "local_path", lambda self, rel_path: None)  # as on s3://
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the user's beton cache
    # in this process, where local_path is patched (no Ray worker, which would not be)
    estimated = api.estimate(
        config, out, "knn_shapley", executor=SerialExecutor(), show_progress=False
    )
    assert estimated == {"scores": expected_rows}
    targets, scores = Run(out).scores("knn_shapley")
    assert scores.shape == (expected_rows, 60) and np.isfinite(scores).all()
    assert list((tmp_path / "cache" / "datamodels" / "betons").glob("*.beton"))  # copied
