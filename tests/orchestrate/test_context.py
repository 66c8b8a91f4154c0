"""The per-process context decodes a run's data again when its beton changes."""

from __future__ import annotations

import shutil

import numpy as np

from datamodels.api import prepare
from datamodels.config import config_from_dict
from datamodels.orchestrate.context import Context
from datamodels.store import Run


def _dataset(path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=60)
    np.savez(path, X=rng.normal(size=(60, 4)).astype(np.float32), y=labels)


def test_a_run_made_again_under_the_same_name_is_decoded_again(tmp_path):
    """A long-lived worker (Ray keeps them between tasks) served the first run; the run
    directory is removed and prepared again from a regenerated dataset file."""
    data, out = tmp_path / "data.npz", tmp_path / "run"
    config = config_from_dict(
        {"dataset": {"name": "arrays", "path": str(data)}, "model": {"arch": "logreg"}}
    )
    ctx = Context()
    seen = []
    for seed in (0, 1):
        shutil.rmtree(out, ignore_errors=True)
        _dataset(data, seed)
        prepare(config, str(out))
        got = ctx.data(Run(out), config)
        seen.append(got.train_y.numpy().copy())
        np.testing.assert_array_equal(got.train_y.numpy(), np.load(data)["y"][got.train_index])
    assert not np.array_equal(seen[0], seen[1])
