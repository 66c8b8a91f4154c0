"""The object-store beton cache: copies named by their content, checked on reuse, kept in a
directory of the user's own (docs/run-directory.md, "The beton cache")."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from datamodels.api import prepare, train
from datamodels.config import config_from_dict
from datamodels.errors import StoreError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run
from datamodels.store.beton import cache_dir, local_beton

from .conftest import BUCKET


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "datamodels" / "betons"


def _dataset(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=120)
    features = rng.normal(size=(120, 6)).astype(np.float32) + labels[:, None]
    np.savez(path, X=features, y=labels)


def test_two_runs_of_one_config_over_a_regenerated_dataset_train_on_their_own_data(
    s3_endpoint, tmp_path, private_cache
):
    """Same config (same hash), the dataset file regenerated between the runs: the second
    run trains on its own beton, as a local-disk run of the new file does."""
    data = tmp_path / "data.npz"
    config = config_from_dict(
        {
            "name": "regenerated",
            "dataset": {"name": "arrays", "path": str(data), "test_fraction": 0.25},
            "model": {"arch": "logreg"},
            "train": {"epochs": 1, "batch_size": 30, "lr": 0.1},
            "plans": [{"name": "train", "alpha": 0.5, "count": 2}],
            "resources": {"models_per_task": 2},
        }
    )
    margins = {}
    for name, uri, seed in (
        ("first", f"s3://{BUCKET}/regenerated/first", 0),
        ("second", f"s3://{BUCKET}/regenerated/second", 1),
        ("local", str(tmp_path / "local"), 1),
    ):
        _dataset(data, seed)
        prepare(config, uri, show_progress=False)
        train(config, uri, executor=SerialExecutor(), show_progress=False)
        run = Run(uri)
        margins[name] = run.margins()
        features = np.load(data)["X"]
        np.testing.assert_allclose(
            run.inputs("train"), features[run.examples().query("split == 'train'")["index"]],
            rtol=1e-6,
        )  # fmt: skip
    assert not np.allclose(margins["second"], margins["first"])
    np.testing.assert_allclose(margins["second"], margins["local"], rtol=1e-5, atol=1e-5)
    assert len(list(private_cache.glob("*.beton"))) == 2  # one copy per content


def test_a_damaged_copy_is_fetched_again(s3_endpoint, tmp_path, private_cache):
    uri = f"s3://{BUCKET}/damaged"
    run = Run(uri)
    run.fs.write_bytes_atomic("data/examples.beton", b"beton bytes " * 100)
    path = Path(local_beton(run))
    assert path.parent == private_cache and path.read_bytes() == b"beton bytes " * 100
    path.write_bytes(b"tampered    " * 100)  # same size, other bytes
    os.utime(path, ns=(1, 1))
    assert Path(local_beton(Run(uri))).read_bytes() == b"beton bytes " * 100


def test_the_cache_is_private_to_its_user(private_cache, tmp_path):
    assert cache_dir() == private_cache
    for folder in (private_cache, private_cache.parent):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    os.chmod(private_cache, 0o777)  # loosened by somebody: tightened again
    assert cache_dir() == private_cache and stat.S_IMODE(os.stat(private_cache).st_mode) == 0o700


def test_a_planted_link_is_refused(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "xdg").mkdir()
    (tmp_path / "xdg" / "datamodels").symlink_to(elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "xdg"))  # the fallback too
    (tmp_path / "xdg" / f"datamodels-cache-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(StoreError, match="is not a directory of this user"):
        cache_dir()
