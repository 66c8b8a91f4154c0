"""The ``cifar10`` and ``cifar100`` sources: the python archives (a folder or the
``.tar.gz``) read from ``dataset.path``, unpickled with an allow-list of the numpy types they
hold; images uint8 [N, 32, 32, 3] and the archives' own train/test split."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.dataset import ArrayDataset
from datamodels.errors import DataError

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


def _cifar_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR-10 batch may name: what numpy needs to rebuild its arrays
    (under both numpy 1 and numpy 2 module names, so either era's pickles load)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocol <= 2 pickles written by Python 3 spell bytes as _codecs.encode(str, 'latin1')
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 array pickles
            allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch without running code: ``find_class`` admits only numpy's
    array-rebuilding helpers, so a crafted file naming ``os.system`` or ``exec`` is refused."""

    def __init__(self, raw: bytes, where: str) -> None:
        super().__init__(io.BytesIO(raw), encoding="bytes")
        self.where = where
        self.allowed = _cifar_globals()

    def find_class(self, module: str, name: str) -> object:
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(
                f"{self.where}: refused to load '{module}.{name}' (a CIFAR-10 batch holds only "
                "arrays, lists and strings); is this the official archive?"
            )
        return found


def _read_cifar_batch(
    raw: bytes, where: str, key: bytes = b"labels"
) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(raw, where).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[key], dtype=np.int64)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling problem means a bad archive
        raise DataError(
            f"{where}: not a CIFAR-10 python batch ({type(err).__name__}: {err})"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{where}: expected data uint8[N, 3072] and N labels, got {data.shape}")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def load_cifar10_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """Read the standard ``cifar-10-python.tar.gz`` archive or its extracted folder."""
    path = Path(str(cfg.path)).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset.path: CIFAR-10 archive not found at {path}; give the path to "
            "cifar-10-python.tar.gz or to its extracted cifar-10-batches-py folder"
        )
    names = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
    raws = _archive_members(path, CIFAR_DIR, names, "CIFAR-10")
    parts = [_read_cifar_batch(raws[name], f"{path}:{name}") for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    n_test = len(parts[-1][1])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[-n_test:] = True
    return ArrayDataset("cifar10", images, labels, is_test, 10)


CIFAR100_DIR = "cifar-100-python"


def _archive_members(path: Path, folder: str, names: tuple[str, ...], what: str) -> dict:
    """name -> bytes of ``names`` from a python-pickle CIFAR archive or its extracted folder."""
    raws: dict[str, bytes] = {}
    if path.is_dir():
        root = path / folder if (path / folder).is_dir() else path
        for name in names:
            if not (root / name).is_file():
                raise DataError(f"dataset.path: {root / name} is missing from the {what} folder")
            raws[name] = (root / name).read_bytes()
        return raws
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            for name in names:
                if name not in members:
                    raise DataError(f"dataset.path: {path} has no member {folder}/{name}")
                raws[name] = archive.extractfile(members[name]).read()  # type: ignore[union-attr]
    except tarfile.TarError as err:
        raise DataError(f"dataset.path: {path} is not a readable tar archive ({err})") from None
    return raws


def load_cifar100_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """Read the standard ``cifar-100-python.tar.gz`` archive (or its extracted folder): the
    ``train`` and ``test`` batches with their 100 fine labels, named by ``meta``."""
    path = Path(str(cfg.path)).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset.path: CIFAR-100 archive not found at {path}; give the path to "
            "cifar-100-python.tar.gz or to its extracted cifar-100-python folder"
        )
    raws = _archive_members(path, CIFAR100_DIR, ("train", "test", "meta"), "CIFAR-100")
    train = _read_cifar_batch(raws["train"], f"{path}:train", b"fine_labels")
    test = _read_cifar_batch(raws["test"], f"{path}:test", b"fine_labels")
    try:
        meta = _CifarUnpickler(raws["meta"], f"{path}:meta").load()
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]
        ]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling problem means a bad archive
        raise DataError(f"{path}:meta: not a CIFAR-100 meta file ({err})") from None
    images = np.concatenate([train[0], test[0]])
    labels = np.concatenate([train[1], test[1]])
    is_test = np.arange(len(labels)) >= len(train[1])
    return ArrayDataset("cifar100", images, labels, is_test, 100, class_names=names)
