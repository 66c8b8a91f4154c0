"""Bad dataset files are refused with one-line DataErrors, and CIFAR-10 batches never run code."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from datamodels.config import DatasetConfig
from datamodels.data.sources import load_dataset
from datamodels.errors import DataError
from tests.conftest import write_cifar_archive

# --- CIFAR-10: a restricted unpickler -------------------------------------------------------


class _Call:
    """Pickles as a call of ``func(*args)``: what a crafted batch file would run on load."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Call]:
    return {
        f"{os.system.__module__}.system": _Call(os.system, f"touch '{marker}'"),
        "builtins.exec": _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.run": _Call(subprocess.run, ["touch", str(marker)]),
    }


def _cifar_with(target: Path, replace: dict[str, bytes], as_dir: bool) -> Path:
    """The generated archive (folder or tar.gz at ``target``) with some batch files replaced."""
    folder = target.with_name(target.name + "-parts") if not as_dir else target
    write_cifar_archive(folder, n_per_batch=4, n_test=4, seed=1, as_dir=True)
    root = folder / "cifar-10-batches-py"
    for name, raw in replace.items():
        (root / name).write_bytes(raw)
    if as_dir:
        return target
    with tarfile.open(target, "w:gz") as archive:
        for part in sorted(root.iterdir()):
            raw = part.read_bytes()
            info = tarfile.TarInfo(f"cifar-10-batches-py/{part.name}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return target


@pytest.mark.parametrize("as_dir", [False, True], ids=["tar", "dir"])
@pytest.mark.parametrize("refused", ["system", "builtins.exec", "subprocess.run"])
def test_cifar_batch_that_runs_code_is_refused(tmp_path, as_dir, refused):
    marker = tmp_path / "pwned"
    (name, call), = [(k, v) for k, v in _payloads(marker).items() if k.endswith(refused)]
    batch = pickle.dumps({b"data": call, b"labels": [0, 1]})
    target = _cifar_with(tmp_path / "cifar-10-python.tar.gz", {"data_batch_1": batch}, as_dir)
    with pytest.raises(DataError) as caught:
        load_dataset(DatasetConfig(name="cifar10", path=str(target)))
    message = str(caught.value)
    assert not marker.exists(), "unpickling the batch ran the attacker's code"
    assert f"data_batch_1: refused to load '{name}'" in message
    assert "is this the official archive?" in message and "\n" not in message


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    """Arrays, lists, bytes, str and numpy scalars pass the restricted unpickler, whichever
    protocol wrote them (2 spells bytes via _codecs.encode, 5 arrays via _frombuffer)."""
    rng = np.random.default_rng(protocol)
    replace = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(3, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=3)],
            b"batch_label": name,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(3)],
            b"count": np.int64(3),
        }
        replace[name] = pickle.dumps(batch, protocol=protocol)
    for as_dir in (False, True):
        target = tmp_path / f"p{protocol}-{as_dir}"
        path = _cifar_with(target, replace, as_dir)
        ds = load_dataset(DatasetConfig(name="cifar10", path=str(path)))
        assert ds.features.shape == (18, 32, 32, 3) and ds.is_test.sum() == 3
        first = pickle.loads(replace["data_batch_1"])
        assert ds.labels[:3].tolist() == first[b"labels"]
        assert ds.features[0, 0, 1, 0] == first[b"data"][0, 1]


def test_cifar_label_outside_ten_classes_is_refused(tmp_path):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}
    target = _cifar_with(tmp_path / "c", {"data_batch_2": pickle.dumps(batch)}, as_dir=True)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 10"):
        load_dataset(DatasetConfig(name="cifar10", path=str(target)))


# --- bad arrays refused at load time -----------------------------------------------------


def _npz(tmp_path: Path, name: str = "mine", test_fraction: float = 0.2, **arrays):
    np.savez(tmp_path / f"{name}.npz", **arrays)
    path = str(tmp_path / f"{name}.npz")
    return DatasetConfig(name="arrays", path=path, test_fraction=test_fraction)


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, size=n)


def _error(cfg: DatasetConfig) -> str:
    with pytest.raises(DataError) as caught:
        load_dataset(cfg)
    message = str(caught.value)
    assert "\n" not in message and cfg.path in message
    return message


def test_nan_and_inf_features_are_refused_naming_rows(tmp_path):
    X, y = _data()
    X[[3, 17, 18, 21, 30, 33, 39], 2] = np.nan
    X[17, 0] = np.inf
    message = _error(_npz(tmp_path, X=X, y=y))
    assert "NaN/inf" in message and "in 7 of 40 rows (rows 3, 17, 18, 21, 30, ...)" in message
    X, y = _data()
    X[5, 4] = -np.inf
    assert "in 1 of 40 rows (rows 5)" in _error(_npz(tmp_path, "inf", X=X, y=y))
    X, y = _data()
    X[9, 1] = 1e300  # finite in float64, inf once cast to float32 features
    assert "(rows 9)" in _error(_npz(tmp_path, "big", X=X, y=y))


def test_single_class_is_refused_naming_the_label(tmp_path):
    X, _ = _data()
    message = _error(_npz(tmp_path, X=X, y=np.full(40, 2)))
    assert "one class only (label 2 in all 40 rows)" in message


def test_zero_rows_are_refused(tmp_path):
    message = _error(_npz(tmp_path, X=np.zeros((0, 5)), y=np.zeros(0, dtype=np.int64)))
    assert "the dataset has no rows" in message
    with_split = _npz(
        tmp_path, "split0", X=np.zeros((0, 2, 2)), y=np.zeros(0, np.int64), split=np.array([], str)
    )
    assert "the dataset has no rows" in _error(with_split)


def test_empty_train_or_test_split_is_refused_saying_which(tmp_path):
    X, y = _data()
    all_train = _error(_npz(tmp_path, "t", X=X, y=y, split=np.array(["train"] * 40)))
    assert "the test split has no rows (all 40 are train)" in all_train
    all_test = _error(_npz(tmp_path, "e", X=X, y=y, split=np.array(["test"] * 40)))
    assert "the train split has no rows (all 40 are test)" in all_test
    X, y = _data(n=3)
    tiny = _npz(tmp_path, "tiny", test_fraction=0.1, X=X, y=np.array([0, 1, 1]))  # 0 test rows
    assert "the test split has no rows" in _error(tiny)


def test_split_error_names_the_offending_values_literally(tmp_path):
    X, y = _data()
    split = np.array(["train"] * 30 + ["test"] * 7 + ["unused", "val", "unused"])
    message = _error(_npz(tmp_path, X=X, y=y, split=split))
    assert "split may only hold 'train'/'test', found 'unused', 'val' in 3 rows" in message
    assert "(rows 37, 38, 39)" in message
    assert "[" not in message and "np.str_" not in message  # no list/numpy reprs to mangle
    short = _error(_npz(tmp_path, "short", X=X, y=y, split=np.array(["train"] * 39)))
    assert "split has 39 rows but y has 40" in short
