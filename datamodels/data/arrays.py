"""The ``arrays`` source: a user's ``.npz`` of ``X``, ``y`` and optionally ``split``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.dataset import ArrayDataset, seeded_split, split_column
from datamodels.errors import DataError


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
        is_test = split_column(archive["split"], len(labels), path)
    else:
        is_test = seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return ArrayDataset(path.stem, features, labels.astype(np.int64), is_test, num_classes)
