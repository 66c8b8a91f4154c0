import numpy as np

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
