"""Dataset sources: scikit-learn digits, the CIFAR-10 python archive, and a user's ``.npz``.

Every source returns an ``ArrayDataset``: all examples in one array in a fixed order (the
example ``index``), their labels, and each one's split. Nothing is downloaded: digits ships
with scikit-learn, CIFAR-10 and ``.npz`` files are read from the path the user gives.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.errors import DataError

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"


@dataclass
class ArrayDataset:
    """``features``: float32[N, d] or uint8[N, H, W, C] images; ``labels``: int64[N];
    ``is_test``: bool[N]; ``original_labels`` differ from ``labels`` only where flipped."""

    name: str
    features: np.ndarray
    labels: np.ndarray
    is_test: np.ndarray
    num_classes: int
    original_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.original_labels is None:
            self.original_labels = self.labels.copy()

    @property
    def is_image(self) -> bool:
        return self.features.ndim == 4

    def __len__(self) -> int:
        return len(self.labels)


def _seeded_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_test = int(round(n * test_fraction))
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.permutation(n)[:n_test]] = True
    return is_test


def load_digits_dataset(cfg: DatasetConfig) -> ArrayDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    is_test = _seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    return ArrayDataset("digits", features, labels, is_test, 10)


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


def _read_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(raw, where).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
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
    raws: dict[str, bytes] = {}
    if path.is_dir():
        root = path / CIFAR_DIR if (path / CIFAR_DIR).is_dir() else path
        for name in names:
            if not (root / name).is_file():
                raise DataError(f"dataset.path: {root / name} is missing from the CIFAR-10 folder")
            raws[name] = (root / name).read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as archive:
                members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
                for name in names:
                    if name not in members:
                        raise DataError(f"dataset.path: {path} has no member {CIFAR_DIR}/{name}")
                    raws[name] = archive.extractfile(members[name]).read()  # type: ignore[union-attr]
        except tarfile.TarError as err:
            raise DataError(f"dataset.path: {path} is not a readable tar archive ({err})") from None
    parts = [_read_cifar_batch(raws[name], f"{path}:{name}") for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    n_test = len(parts[-1][1])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[-n_test:] = True
    return ArrayDataset("cifar10", images, labels, is_test, 10)


def _first_rows(rows: np.ndarray, show: int = 5) -> str:
    listed = ", ".join(str(int(r)) for r in rows[:show])
    return listed + (", ..." if len(rows) > show else "")


def _split_column(split: np.ndarray, n: int, path: Path) -> np.ndarray:
    """``split`` [N] of 'train'/'test' as a bool is-test mask; refuses any other value."""
    split = np.asarray(split).reshape(-1).astype(str)
    if len(split) != n:
        raise DataError(f"{path}: split has {len(split)} rows but y has {n}; give one per row")
    wrong = ~np.isin(split, ["train", "test"])
    if wrong.any():
        # values quoted one by one (no list brackets): the message must survive markup printers
        values = sorted({str(v) for v in split[wrong]})
        shown = ", ".join(repr(v) for v in values[:3]) + (", ..." if len(values) > 3 else "")
        rows = np.flatnonzero(wrong)
        raise DataError(
            f"{path}: split may only hold 'train'/'test', found {shown} in {len(rows)} rows "
            f"(rows {_first_rows(rows)}); relabel those rows 'train' or 'test'"
        )
    return split == "test"


def load_arrays_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """A user's ``.npz`` with ``X`` (features [N, ...] or uint8 images [N, H, W, C]), integer
    ``y`` [N], and optionally ``split`` [N] of 'train'/'test' strings."""
    path = Path(str(cfg.path)).expanduser()
    if not path.is_file():
        raise DataError(f"dataset.path: file not found: {path} (an .npz with arrays X and y)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise DataError(f"dataset.path: {path} is not a readable .npz ({err})") from None
    for key in ("X", "y"):
        if key not in archive.files:
            raise DataError(
                f"dataset.path: {path} has no array '{key}' (found: {', '.join(archive.files)})"
            )
    features, labels = archive["X"], archive["y"]
    if len(features) != len(labels):
        raise DataError(f"{path}: X has {len(features)} rows but y has {len(labels)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class labels, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: y has negative labels; use 0..C-1")
    if not (features.ndim == 4 and features.dtype == np.uint8):
        width = int(np.prod(features.shape[1:]))  # not -1: that cannot reshape zero rows
        with np.errstate(over="ignore"):  # overflow to inf is refused by check_dataset
            features = features.reshape(len(features), width).astype(np.float32)
    if "split" in archive.files:
        is_test = _split_column(archive["split"], len(labels), path)
    else:
        is_test = _seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return ArrayDataset(path.stem, features, labels.astype(np.int64), is_test, num_classes)


def _limit(ds: ArrayDataset, cfg: DatasetConfig) -> ArrayDataset:
    keep = np.ones(len(ds), dtype=bool)
    for limit, part in ((cfg.limit_train, ~ds.is_test), (cfg.limit_test, ds.is_test)):
        if limit is not None:
            positions = np.flatnonzero(part)
            keep[positions[limit:]] = False
    if keep.all():
        return ds
    return ArrayDataset(
        ds.name, ds.features[keep], ds.labels[keep], ds.is_test[keep], ds.num_classes
    )


def flip_labels(ds: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    """Give a seeded ``fraction`` of training examples a different (uniformly drawn) label."""
    if fraction <= 0:
        return ds
    rng = np.random.default_rng([seed, 7919])
    train_positions = np.flatnonzero(~ds.is_test)
    size = int(round(fraction * len(train_positions)))
    chosen = rng.choice(train_positions, size=size, replace=False)
    labels = ds.labels.copy()
    shift = rng.integers(1, ds.num_classes, size=len(chosen))
    labels[chosen] = (labels[chosen] + shift) % ds.num_classes
    return ArrayDataset(ds.name, ds.features, labels, ds.is_test, ds.num_classes, ds.labels.copy())


LOADERS = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10_dataset,
    "arrays": load_arrays_dataset,
}


def _source(cfg: DatasetConfig) -> str:
    """How messages name the dataset: its file, or the built-in's name."""
    if cfg.name in ("cifar10", "arrays"):
        return str(Path(str(cfg.path)).expanduser())
    return f"dataset {cfg.name}"


def check_dataset(ds: ArrayDataset, where: str) -> None:
    """Refuse what no source should hand on: no rows, non-finite features, a single class,
    labels outside 0..num_classes-1, or an empty train or test split. Every source's dataset
    passes through here (from ``load_dataset``) before limits and label flips."""
    n = len(ds.labels)
    if n == 0:
        raise DataError(
            f"{where}: the dataset has no rows; give at least one train and one test example"
        )
    if np.issubdtype(ds.features.dtype, np.inexact):
        finite = np.isfinite(ds.features.reshape(n, -1)).all(axis=1)
        if not finite.all():
            rows = np.flatnonzero(~finite)
            raise DataError(
                f"{where}: X has NaN/inf (or values beyond float32 range) in {len(rows)} of {n} "
                f"rows (rows {_first_rows(rows)}); drop or impute those rows"
            )
    classes = np.unique(ds.labels)
    if len(classes) < 2:
        raise DataError(
            f"{where}: y holds one class only (label {int(classes[0])} in all {n} rows); "
            "a classifier needs examples of at least two classes"
        )
    if classes[0] < 0 or classes[-1] >= ds.num_classes:
        raise DataError(
            f"{where}: labels must lie in 0..{ds.num_classes - 1}, found "
            f"{int(classes[0]) if classes[0] < 0 else int(classes[-1])}; relabel those rows"
        )
    n_test = int(ds.is_test.sum())
    for empty, full, count in (("test", "train", n_test), ("train", "test", n - n_test)):
        if count == 0:
            raise DataError(
                f"{where}: the {empty} split has no rows (all {n} are {full}); mark some rows "
                f"'{empty}' in split, or without a split array change dataset.test_fraction"
            )


def load_dataset(cfg: DatasetConfig) -> ArrayDataset:
    ds = LOADERS[cfg.name](cfg)
    check_dataset(ds, _source(cfg))
    ds = _limit(ds, cfg)
    return flip_labels(ds, cfg.flip_fraction, cfg.split_seed)
