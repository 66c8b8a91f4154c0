"""Dataset sources: scikit-learn digits, the CIFAR-10 python archive, a user's ``.npz``, a
folder of class sub-folders of images, and a user's loader function (``dataset.factory``).

Every source returns an ``ArrayDataset``: all examples in one array in a fixed order (the
example ``index``), their labels, and each one's split. Nothing is downloaded: digits ships
with scikit-learn, CIFAR-10, ``.npz`` files and image folders are read from the path the user
gives, and a factory loads what it likes. ``prepare`` writes the result to the beton once.

Features are images (uint8 [N, H, W, C]; [N, H, W] gets C = 1) or anything else, flattened to
float32 [N, d] (a module that wants a shape back reshapes, e.g. ``nn.Unflatten``).

Each kind of source is one module (``digits``, ``cifar``, ``arrays``, ``imagefolder``,
``factory``) with a loader ``DatasetConfig -> ArrayDataset``; ``LOADERS`` maps
``dataset.name`` to it. Adding a source: one module and one line in ``LOADERS`` (and the name
in ``DatasetConfig``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.arrays import load_arrays_dataset
from datamodels.data.cifar import load_cifar10_dataset, load_cifar100_dataset
from datamodels.data.dataset import ArrayDataset, first_rows
from datamodels.data.digits import load_digits_dataset
from datamodels.data.factory import load_factory_dataset
from datamodels.data.imagefolder import load_imagefolder_dataset
from datamodels.errors import DataError

__all__ = [
    "LOADERS", "ArrayDataset", "check_dataset", "flip_labels", "load_arrays_dataset",
    "load_cifar10_dataset", "load_cifar100_dataset", "load_dataset", "load_digits_dataset",
    "load_factory_dataset", "load_imagefolder_dataset",
]


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
                f"rows (rows {first_rows(rows)}); drop or impute those rows"
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
