"""The array store (``data/examples.npy`` + checksum): what ``prepare`` writes without FFCV.

Checked against the dataset's own arrays; tests/orchestrate/test_optional_deps.py checks a
run's store against the beton FFCV writes of the same dataset."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from datamodels.data.array_store import ArrayLoader, checksum_path, decode_arrays, write_arrays
from datamodels.data.beton import FORMAT_ENV, data_format, decode_resident, subset_loader
from datamodels.data.dataset import ArrayDataset
from datamodels.errors import ConfigError, DataError, MissingDependencyError


def _images(n: int = 50) -> ArrayDataset:
    rng = np.random.default_rng(0)
    features = rng.integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, n).astype(np.int64)
    return ArrayDataset("toy", features, labels, np.zeros(n, bool), 4)


def test_round_trip_keeps_dtype_shape_and_order_and_records_the_sha256(tmp_path):
    ds = _images()
    path = tmp_path / "data" / "examples.npy"
    write_arrays(ds, path)
    features, labels = decode_arrays(path)
    assert features.dtype == np.uint8 and features.shape == ds.features.shape
    np.testing.assert_array_equal(features, ds.features)
    np.testing.assert_array_equal(labels, ds.labels)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert checksum_path(path).read_text() == f"{digest}  examples.npy\n"  # sha256sum format
    assert sorted(p.name for p in path.parent.iterdir()) == ["examples.npy", "examples.npy.sha256"]


def test_an_altered_store_is_refused_in_one_line_naming_the_file(tmp_path):
    path = tmp_path / "examples.npy"
    write_arrays(_images(), path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # one byte of the last label
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its checksum") as err:
        decode_arrays(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    checksum_path(path).unlink()
    with pytest.raises(DataError, match="missing or empty"):
        decode_arrays(path)


def test_the_loader_yields_each_subset_example_once_per_epoch_in_a_seeded_order(tmp_path):
    ds = _images(70)
    path = tmp_path / "examples.npy"
    write_arrays(ds, path)
    subset = np.array([3, 5, 8, 13, 21, 34, 55, 60, 61, 69])

    def epochs(seed: int) -> list[list[int]]:
        loader = ArrayLoader(path, subset, batch_size=4, seed=seed)
        assert len(loader) == 3
        out = []
        for _ in range(2):
            order = []
            for x, y in loader:
                assert x.dtype.is_floating_point is False and y.dtype.itemsize == 8
                rows = [int(np.flatnonzero((ds.features == x[i].numpy()).all(axis=(1, 2, 3)))[0])
                        for i in range(len(x))]
                np.testing.assert_array_equal(y.numpy(), ds.labels[rows])
                order += rows
            out.append(order)
        return out

    first, again, other = epochs(1), epochs(1), epochs(2)
    for order in first:
        assert sorted(order) == subset.tolist()
    assert first == again and first != other and first[0] != first[1]
    assert isinstance(subset_loader(path, subset, 4, 1), ArrayLoader)  # dispatch on .npy


def test_the_format_follows_ffcv_unless_chosen(monkeypatch, tmp_path):
    import datamodels.data.beton as beton

    monkeypatch.delenv(FORMAT_ENV, raising=False)
    monkeypatch.setattr(beton, "ffcv_installed", lambda: False)
    assert data_format() == "arrays"
    monkeypatch.setattr(beton, "ffcv_installed", lambda: True)
    assert data_format() == "beton"
    monkeypatch.setenv(FORMAT_ENV, "arrays")
    assert data_format() == "arrays"
    monkeypatch.setenv(FORMAT_ENV, "parquet")
    with pytest.raises(ConfigError, match="choose beton or arrays"):
        data_format()
    # a beton where FFCV is missing: read whole from its pages; per-model loading, which
    # needs FFCV's Loader, says so in one line naming the extra and the way around it
    ds = ArrayDataset("d", np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6) % 3,
                      np.zeros(6, bool), 3)  # fmt: skip
    beton.write_beton(ds, tmp_path / "examples.beton")
    monkeypatch.setattr(beton, "ffcv_installed", lambda: False)
    features, labels = decode_resident(tmp_path / "examples.beton")
    np.testing.assert_array_equal(features, ds.features)
    np.testing.assert_array_equal(labels, ds.labels)
    with pytest.raises(MissingDependencyError, match=r"datamodels\[ffcv\].*arrays"):
        subset_loader(tmp_path / "examples.beton", np.arange(3), batch_size=2, seed=0)


def test_per_model_loading_trains_from_the_array_store(tmp_path, monkeypatch):
    """``resources.loader: per_model`` (datasets larger than memory) reads batches from the
    memory-mapped store; the models learn digits (chance: 0.1)."""
    from datamodels import api
    from datamodels.config import config_from_dict
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.store import Run

    monkeypatch.setenv(FORMAT_ENV, "arrays")
    config = config_from_dict({
        "name": "per_model", "dataset": {"name": "digits"},
        "model": {"arch": "mlp", "hidden": 16}, "train": {"epochs": 3, "batch_size": 64},
        "plans": [{"name": "train", "alpha": 0.5, "count": 3}],
        "resources": {"loader": "per_model", "models_per_task": 3},
    })
    out = tmp_path / "run"
    summary = api.train(config, str(out), executor=SerialExecutor(), show_progress=False)
    assert summary.trained == 3 and (out / "data" / "examples.npy").is_file()
    assert not (out / "data" / "examples.beton").exists()
    accuracy = Run(str(out)).models().column("eval_accuracy").to_numpy()
    assert len(accuracy) == 3 and accuracy.min() > 0.5
