import numpy as np
import pytest

from datamodels.config import DatasetConfig
from datamodels.data.beton import decode_resident, subset_loader, write_beton
from datamodels.data.sources import load_dataset


def test_beton_round_trip_and_subset_loader(tmp_path):
    ds = load_dataset(DatasetConfig(name="digits", limit_train=200, limit_test=50))
    path = tmp_path / "d.beton"
    write_beton(ds, path)
    features, labels = decode_resident(path)
    np.testing.assert_array_equal(features, ds.features)
    np.testing.assert_array_equal(labels, ds.labels)
    indices = np.flatnonzero(np.random.default_rng(0).random(len(ds)) < 0.4)
    seen_labels, seen_rows = [], []
    for x, y in subset_loader(path, indices, batch_size=16, seed=5):
        seen_rows.append(x.numpy().copy())  # FFCV reuses its batch buffers
        seen_labels.append(y.numpy().reshape(-1).copy())
    rows = np.concatenate(seen_rows)
    assert len(rows) == len(indices)  # every subset example once per epoch, no others
    order = np.lexsort(rows.T[::-1])
    expected = ds.features[indices]
    np.testing.assert_array_equal(rows[order], expected[np.lexsort(expected.T[::-1])])


def test_images_round_trip(tmp_path, cifar_archive):
    ds = load_dataset(DatasetConfig(name="cifar10", path=str(cifar_archive)))
    write_beton(ds, tmp_path / "c.beton")
    features, labels = decode_resident(tmp_path / "c.beton")
    assert features.dtype == np.uint8 and features.shape == ds.features.shape
    np.testing.assert_array_equal(features, ds.features)


def test_the_page_reader_equals_ffcvs_loader_across_pages(tmp_path):
    """``decode_resident`` reads a beton from its pages (``beton_file``), not through FFCV's
    Loader: the same arrays as the Loader's, on a file of several pages; a truncated file
    is named, not misread."""
    from ffcv.loader import Loader, OrderOption

    from datamodels.data.beton import _pipelines
    from datamodels.data.beton_file import read_beton
    from datamodels.data.sources import ArrayDataset
    from datamodels.errors import DataError

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2500, 32, 32, 3), dtype=np.uint8)  # 7.7 MB: pages
    labels = rng.integers(0, 10, size=len(images))
    path = tmp_path / "big.beton"
    write_beton(ArrayDataset("big", images, labels, np.zeros(len(images), bool), 10), path)
    loader = Loader(str(path), batch_size=1000, num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, pipelines=_pipelines())  # fmt: skip
    batches = [(x.numpy().copy(), y.numpy().reshape(-1).copy()) for x, y in loader]
    features, read_labels = read_beton(path)
    np.testing.assert_array_equal(features, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(read_labels, np.concatenate([b[1] for b in batches]))
    np.testing.assert_array_equal(features, images)
    cut = tmp_path / "cut.beton"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.beton"):
        read_beton(cut)


def test_a_writer_whose_workers_died_is_reported_not_waited_on(tmp_path, monkeypatch):
    """FFCV's parent loop waits forever for dead workers (seen with a full disk)."""
    import os
    import time

    import ffcv.writer
    import pytest

    from datamodels.data.sources import ArrayDataset
    from datamodels.errors import DataError

    def die(*args, **kwargs):  # a worker killed mid-write
        os._exit(1)

    monkeypatch.setattr(ffcv.writer, "worker_job_indexed_dataset", die)
    ds = ArrayDataset("x", np.zeros((50, 4), np.float32), np.arange(50) % 2, np.zeros(50, bool), 2)
    start = time.monotonic()
    with pytest.raises(DataError, match="writer processes exited before finishing"):
        write_beton(ds, tmp_path / "x.beton")
    assert time.monotonic() - start < 60
    assert not list(tmp_path.glob("*x.beton*"))  # no temp file left behind


def test_not_enough_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import pytest

    from datamodels.data.sources import ArrayDataset
    from datamodels.errors import DataError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 20, 10 << 20, 1 << 20))
    ds = ArrayDataset("x", np.zeros((50, 4), np.float32), np.arange(50) % 2, np.zeros(50, bool), 2)
    with pytest.raises(DataError, match="MiB free; writing x.beton needs"):
        write_beton(ds, tmp_path / "x.beton")


def test_a_failed_beton_write_lets_the_process_exit(tmp_path):
    """After the writers died, FFCV's queues used to keep the interpreter from exiting."""
    import subprocess
    import sys

    script = f"""
import os, numpy as np, ffcv.writer
from datamodels.data.beton import write_beton
from datamodels.data.sources import ArrayDataset
from datamodels.errors import DataError
ffcv.writer.worker_job_indexed_dataset = lambda *a, **k: os._exit(1)
n = 2000
ds = ArrayDataset("x", np.zeros((n, 4), np.float32), np.arange(n) % 2, np.zeros(n, bool), 2)
try:
    write_beton(ds, {str(tmp_path / "x.beton")!r})
except DataError as err:
    print("refused:", err)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "refused: writing x.beton failed" in result.stdout
