"""A run prepared without FFCV on an object store: its array store (``data/examples.npy`` and
its checksum) is written there, copied once into the user's cache, checked against the run's
checksum file, and trains the models a local run of the same config trains."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from datamodels.api import prepare, train
from datamodels.config import config_from_dict
from datamodels.data.beton import FORMAT_ENV
from datamodels.errors import DataError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run
from datamodels.store.beton import ARRAYS_CHECKSUM_PATH, ARRAYS_PATH, data_path, local_beton

from .conftest import BUCKET


def test_an_array_store_on_an_object_store_trains_as_a_local_one(
    s3_endpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv(FORMAT_ENV, "arrays")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=90)
    features = rng.normal(size=(90, 5)).astype(np.float32) + labels[:, None]
    np.savez(tmp_path / "data.npz", X=features, y=labels)
    config = config_from_dict({
        "name": "arrays_remote",
        "dataset": {"name": "arrays", "path": str(tmp_path / "data.npz"), "test_fraction": 0.25},
        "model": {"arch": "logreg"},
        "train": {"epochs": 3, "batch_size": 30, "lr": 0.1},
        "plans": [{"name": "train", "alpha": 0.5, "count": 4}],
        "resources": {"models_per_task": 4},
    })
    margins = {}
    for name, uri in (("remote", f"s3://{BUCKET}/arrays/remote"), ("local", str(tmp_path / "l"))):
        prepare(config, uri, show_progress=False)
        train(config, uri, executor=SerialExecutor(), show_progress=False)
        run = Run(uri)
        assert data_path(run) == ARRAYS_PATH and run.fs.isfile(ARRAYS_CHECKSUM_PATH)
        margins[name] = run.margins("train")
    np.testing.assert_array_equal(margins["remote"], margins["local"])

    remote = Run(f"s3://{BUCKET}/arrays/remote")
    stored = remote.fs.read_bytes(ARRAYS_PATH)
    digest = hashlib.sha256(stored).hexdigest()
    copy = Path(local_beton(remote))
    assert copy.name == f"{digest}.npy" and copy.read_bytes() == stored
    assert copy.parent.parent.parent == tmp_path / "xdg"  # the user's own cache

    # a store whose checksum file disagrees with its bytes is refused before any copy is used
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg2"))
    remote.fs.write_bytes_atomic(ARRAYS_CHECKSUM_PATH, b"0" * 64 + b"  examples.npy\n")
    with pytest.raises(DataError, match="does not match its checksum"):
        local_beton(remote)
