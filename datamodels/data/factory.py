"""The ``custom`` source: a user's loader function (``dataset.factory``), called with
``dataset.kwargs``; arrays, a torch ``Dataset`` of pairs, or a (train, test) pair of them."""

from __future__ import annotations

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.dataset import ArrayDataset, seeded_split, split_column
from datamodels.errors import DataError
from datamodels.models.callables import resolve_callable


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
            is_test = split if split.dtype == bool else split_column(split, len(labels), where)
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
        is_test = seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    name = str(cfg.factory).rpartition(":")[2]
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    # a factory may name its classes: an attribute ``class_names(**kwargs) -> list[str]``
    namer = getattr(factory, "class_names", None)
    class_names = [str(n) for n in namer(**cfg.kwargs)] if callable(namer) else None
    return ArrayDataset(
        name, _as_features(features, where), labels.astype(np.int64), np.asarray(is_test, bool),
        num_classes, class_names=class_names,
    )
