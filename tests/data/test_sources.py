import numpy as np
import pytest

from datamodels.config import DatasetConfig
from datamodels.data.examples import examples_frame, train_and_eval_index
from datamodels.data.sources import load_dataset
from datamodels.errors import DataError
from tests.conftest import write_cifar_archive


def test_digits_split_is_fixed_and_seeded():
    a = load_dataset(DatasetConfig(name="digits"))
    b = load_dataset(DatasetConfig(name="digits"))
    assert len(a) == 1797 and a.features.shape == (1797, 64) and a.num_classes == 10
    np.testing.assert_array_equal(a.is_test, b.is_test)
    assert a.is_test.sum() == round(1797 * 0.2)
    c = load_dataset(DatasetConfig(name="digits", split_seed=1))
    assert not np.array_equal(a.is_test, c.is_test)


@pytest.mark.parametrize("as_dir", [False, True])
def test_cifar10_archive_reader(tmp_path, as_dir):
    target = tmp_path / ("extracted" if as_dir else "cifar-10-python.tar.gz")
    write_cifar_archive(target, n_per_batch=6, n_test=5, seed=3, as_dir=as_dir)
    ds = load_dataset(DatasetConfig(name="cifar10", path=str(target)))
    assert ds.features.shape == (35, 32, 32, 3) and ds.features.dtype == np.uint8
    assert ds.is_test.sum() == 5 and not ds.is_test[:30].any()
    # pixel layout: the archive stores planes R, G, B of 1024 bytes each
    import pickle
    if as_dir:
        batch = (target / "cifar-10-batches-py" / "data_batch_1").read_bytes()
        raw = pickle.loads(batch, encoding="bytes")
        assert ds.features[0, 0, 1, 0] == raw[b"data"][0, 1]
        assert ds.features[0, 0, 0, 2] == raw[b"data"][0, 2048]
        assert ds.labels[:6].tolist() == raw[b"labels"]


def test_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(DatasetConfig(name="cifar10", path=str(tmp_path / "none.tar.gz")))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataError, match="bad.tar.gz"):
        load_dataset(DatasetConfig(name="cifar10", path=str(bad)))


def test_arrays_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3, 4)).astype(np.float64)
    y = rng.integers(0, 3, size=50)
    split = np.array(["train"] * 40 + ["test"] * 10)
    np.savez(tmp_path / "mine.npz", X=X, y=y, split=split)
    ds = load_dataset(DatasetConfig(name="arrays", path=str(tmp_path / "mine.npz")))
    assert ds.features.shape == (50, 12) and ds.features.dtype == np.float32
    assert ds.is_test.tolist() == (split == "test").tolist() and ds.num_classes == 3
    np.savez(tmp_path / "nosplit.npz", X=X, y=y)
    nosplit = DatasetConfig(name="arrays", path=str(tmp_path / "nosplit.npz"), test_fraction=0.3)
    ds2 = load_dataset(nosplit)
    assert ds2.is_test.sum() == 15
    np.savez(tmp_path / "noy.npz", X=X)
    with pytest.raises(DataError, match="no array 'y'"):
        load_dataset(DatasetConfig(name="arrays", path=str(tmp_path / "noy.npz")))
    with pytest.raises(DataError, match="file not found"):
        load_dataset(DatasetConfig(name="arrays", path=str(tmp_path / "missing.npz")))


def test_label_flips_recorded():
    ds = load_dataset(DatasetConfig(name="digits", flip_fraction=0.1))
    flipped = ds.labels != ds.original_labels
    n_train = (~ds.is_test).sum()
    assert flipped.sum() == round(0.1 * n_train)
    assert not flipped[ds.is_test].any()
    frame = examples_frame(ds)
    assert (frame["label"] != frame["original_label"]).sum() == flipped.sum()


def test_examples_positions():
    ds = load_dataset(DatasetConfig(name="digits", limit_train=30, limit_test=10))
    frame = examples_frame(ds)
    train_index, eval_index = train_and_eval_index(frame)
    assert len(train_index) == 30 and len(eval_index) == 40
    # test split first, then the train split in train-position order
    assert (frame.loc[eval_index[:10], "split"] == "test").all()
    np.testing.assert_array_equal(eval_index[10:], train_index)
    no_train_eval = examples_frame(ds, eval_train=False)
    assert no_train_eval["eval_position"].notna().sum() == 10
