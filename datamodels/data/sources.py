"""Dataset sources: scikit-learn digits, the CIFAR-10 python archive, a user's ``.npz``, a
folder of class sub-folders of images, and a user's loader function (``dataset.factory``).

Every source returns an ``ArrayDataset``: all examples in one array in a fixed order (the
example ``index``), their labels, and each one's split. Nothing is downloaded: digits ships
with scikit-learn, CIFAR-10, ``.npz`` files and image folders are read from the path the user
gives, and a factory loads what it likes. ``prepare`` writes the result to the beton once.

Features are images (uint8 [N, H, W, C]; [N, H, W] gets C = 1) or anything else, flattened to
float32 [N, d] (a module that wants a shape back reshapes, e.g. ``nn.Unflatten``).
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
    class_names: list[str] | None = None  # by label, where the source names its classes

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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_images(files: list[Path], root: Path) -> np.ndarray:
    """uint8 [N, H, W, C]: grayscale when every image is (C = 1), else RGB (C = 3)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"dataset.path: {path} is not a readable image ({err})") from None
    gray = all(image.mode in ("1", "L", "I;16", "I", "F") for image in images)
    mode = "L" if gray else "RGB"
    arrays = [np.asarray(image.convert(mode), dtype=np.uint8) for image in images]
    first = arrays[0].shape
    for path, array in zip(files, arrays, strict=True):
        if array.shape != first:
            raise DataError(
                f"dataset.path: {path} is {array.shape[1]}×{array.shape[0]} pixels but "
                f"{files[0].relative_to(root)} is {first[1]}×{first[0]}; resize the images to "
                "one size (or load them with dataset.factory)"
            )
    stacked = np.stack(arrays)
    return stacked[..., None] if gray else stacked


def load_imagefolder_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """A folder of class sub-folders of images (``root/<class>/<image>``); labels number the
    class names in sorted order. With ``train/`` and ``test/`` sub-folders (each of class
    sub-folders) those are the splits, else a seeded ``test_fraction`` split. Examples are
    in (split, class, file name) order."""
    root = Path(str(cfg.path)).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.path: {root} is not a folder (a folder of class sub-folders)")
    split_roots = {name: root / name for name in ("train", "test")}
    has_split = all(p.is_dir() for p in split_roots.values())
    parts = split_roots if has_split else {"all": root}
    classes = sorted({c.name for part in parts.values() for c in _class_folders(part)})
    if not classes:
        raise DataError(
            f"dataset.path: {root} has no class sub-folders; put each class's images in "
            f"{root}/<class name>/"
        )
    files, labels, is_test = [], [], []
    for split, part in parts.items():
        for label, name in enumerate(classes):
            found = _image_files(part / name) if (part / name).is_dir() else []
            files += found
            labels += [label] * len(found)
            is_test += [split == "test"] * len(found)
    if not files:
        raise DataError(
            f"dataset.path: {root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
            "sub-folders"
        )
    images = _read_images(files, root)
    labels_array = np.asarray(labels, dtype=np.int64)
    split = (
        np.asarray(is_test, dtype=bool) if has_split
        else _seeded_split(len(labels_array), cfg.test_fraction, cfg.split_seed)
    )
    return ArrayDataset(root.name, images, labels_array, split, len(classes), class_names=classes)


def _as_array(value, what: str, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 - whatever the factory returned
        raise DataError(f"{where}: its {what} is not an array ({err})") from None


def _as_features(features: np.ndarray, where: str) -> np.ndarray:
    """uint8 images [N, H, W, C] (a [N, H, W] stack gets C = 1); anything else numeric is
    flattened to float32 [N, d]."""
    if features.dtype == np.uint8 and features.ndim == 3:
        return features[..., None]
    if features.dtype == np.uint8 and features.ndim == 4:
        return features
    if not (np.issubdtype(features.dtype, np.number) or features.dtype == bool):
        raise DataError(f"{where} returned features of dtype {features.dtype}; give numbers")
    width = int(np.prod(features.shape[1:]))
    with np.errstate(over="ignore"):  # overflow to inf is refused by check_dataset
        return features.reshape(len(features), width).astype(np.float32)


def _stack_pairs(dataset, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``torch.utils.data.Dataset`` of (input, label) pairs -> (inputs [N, ...], labels)."""
    inputs, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not (isinstance(item, tuple | list) and len(item) >= 2):
            raise DataError(
                f"{where}: item {i} of its Dataset is a {type(item).__name__}, not an "
                "(input, label) pair"
            )
        x = item[0]
        if hasattr(x, "mode") and hasattr(x, "size"):  # a PIL image
            x = np.asarray(x)
        inputs.append(_as_array(x, f"input {i}", where))
        labels.append(int(_as_array(item[1], f"label {i}", where).reshape(-1)[0]))
    shapes = {a.shape for a in inputs}
    if len(shapes) > 1:
        shown = ", ".join(map(str, sorted(shapes)[:3]))
        raise DataError(
            f"{where}: its Dataset's inputs have different shapes ({shown}); give one shape"
        )
    return np.stack(inputs) if inputs else np.zeros((0, 1), np.float32), np.asarray(labels)


def _is_pair_dataset(value) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(
        value, np.ndarray | tuple | list
    ) and not hasattr(value, "detach")


def load_factory_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """``dataset.factory(**dataset.kwargs)`` returns one of:

    * ``(features, labels)`` or ``(features, labels, is_test)``: arrays (numpy or torch) of
      N rows; ``is_test`` bool[N] or 'train'/'test' strings (default: a seeded
      ``test_fraction`` split);
    * a ``torch.utils.data.Dataset`` of (input, label) pairs (split as above), or a
      ``(train_dataset, test_dataset)`` pair of them.
    """
    from datamodels.models.callables import resolve_callable

    where = f"dataset.factory {cfg.factory!r}"
    factory = resolve_callable(str(cfg.factory), "dataset.factory")
    try:
        loaded = factory(**cfg.kwargs)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's loader: one line names it
        first = (str(err).strip().splitlines() or [""])[0]
        raise DataError(f"{where} raised {type(err).__name__}: {first}") from None
    is_test = None
    if _is_pair_dataset(loaded):
        features, labels = _stack_pairs(loaded, where)
    elif isinstance(loaded, tuple | list) and len(loaded) == 2 and all(
        _is_pair_dataset(part) for part in loaded
    ):
        (train_x, train_y), (test_x, test_y) = (_stack_pairs(p, where) for p in loaded)
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(
                f"{where}: train inputs are {train_x.shape[1:]} but test inputs "
                f"{test_x.shape[1:]}; give one shape"
            )
        features, labels = np.concatenate([train_x, test_x]), np.concatenate([train_y, test_y])
        is_test = np.arange(len(labels)) >= len(train_y)
    elif isinstance(loaded, tuple | list) and len(loaded) in (2, 3):
        features = _as_array(loaded[0], "features", where)
        labels = _as_array(loaded[1], "labels", where).reshape(-1)
        if len(loaded) == 3:
            split = _as_array(loaded[2], "is_test", where).reshape(-1)
            if len(split) != len(labels):
                raise DataError(
                    f"{where}: is_test has {len(split)} rows but labels {len(labels)}"
                )
            is_test = split if split.dtype == bool else _split_column(split, len(labels), where)
    else:
        raise DataError(
            f"{where} returned a {type(loaded).__name__}; return (features, labels[, is_test]) "
            "arrays or a torch Dataset of (input, label) pairs"
        )
    if features.ndim == 0 or len(features) != len(labels):
        raise DataError(
            f"{where}: features have {len(features) if features.ndim else 0} rows but labels "
            f"{len(labels)}; give one label per row"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be integer classes, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: labels are negative; use 0..C-1")
    if is_test is None:
        is_test = _seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    name = str(cfg.factory).rpartition(":")[2]
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    # a factory may name its classes: an attribute ``class_names(**kwargs) -> list[str]``
    namer = getattr(factory, "class_names", None)
    class_names = [str(n) for n in namer(**cfg.kwargs)] if callable(namer) else None
    return ArrayDataset(
        name, _as_features(features, where), labels.astype(np.int64), np.asarray(is_test, bool),
        num_classes, class_names=class_names,
    )


def _limit(ds: ArrayDataset, cfg: DatasetConfig) -> ArrayDataset:
    keep = np.ones(len(ds), dtype=bool)
    for limit, part in ((cfg.limit_train, ~ds.is_test), (cfg.limit_test, ds.is_test)):
        if limit is not None:
            positions = np.flatnonzero(part)
            keep[positions[limit:]] = False
    if keep.all():
        return ds
    return ArrayDataset(
        ds.name, ds.features[keep], ds.labels[keep], ds.is_test[keep], ds.num_classes,
        class_names=ds.class_names,
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
    return ArrayDataset(
        ds.name, ds.features, labels, ds.is_test, ds.num_classes, ds.labels.copy(),
        ds.class_names,
    )


LOADERS = {
    "digits": load_digits_dataset,
    "cifar10": load_cifar10_dataset,
    "cifar100": load_cifar100_dataset,
    "arrays": load_arrays_dataset,
    "imagefolder": load_imagefolder_dataset,
    "custom": load_factory_dataset,
}


def _source(cfg: DatasetConfig) -> str:
    """How messages name the dataset: its file, its factory, or the built-in's name."""
    if cfg.name in ("cifar10", "cifar100", "arrays", "imagefolder"):
        return str(Path(str(cfg.path)).expanduser())
    if cfg.name == "custom":
        return f"dataset.factory {cfg.factory!r}"
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
