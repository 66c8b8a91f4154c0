"""Transfer runs: the source and target datasets as one beton, and the shipped digits pair.

A transfer run (``config.transfer``) pre-trains on subsets of the *source* dataset's classes
and records margins on the *target* dataset's test split. ``prepare`` writes one beton and
one ``examples.parquet`` holding both (``transfer_dataset``, ``transfer_examples``):

* source rows: ``split`` 'source', ``label`` the source class, ``train_position`` the source
  class too (shared by all its examples: ``mask[i]`` is source class i), ``eval_position``
  null; only the source's train split is stored;
* target rows: ``split`` 'train' (the transfer set the probe or fine-tune trains on; no
  position) or 'test' (``eval_position`` 0.., the margins' columns).

``transfer/source_classes.parquet`` names the source classes (``train_position``, ``name``,
``n_examples``).

**The shipped pair** (``configs/transfer_digits.yaml``): scikit-learn's 1,797 digits are
split in two seeded halves. The source (``digits_source``) is one half under several
transforms (upright, rotated, mirrored, ...), one source class per (transform, digit), plus
``mixed`` classes that each lump upright digits of every identity under one label (a class
whose label says nothing about the digit). The target (``digits_target``) is the other
half, upright, labelled by digit: ``train_per_class`` examples per digit to transfer with,
the rest its test split. Ground truth one can read: "upright 3" should help target 3s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.data.sources import ArrayDataset
from datamodels.errors import DataError

TRANSFORMS = {
    "upright": lambda im: im,
    "rot90": lambda im: np.rot90(im, 1, axes=(1, 2)),
    "rot180": lambda im: np.rot90(im, 2, axes=(1, 2)),
    "rot270": lambda im: np.rot90(im, 3, axes=(1, 2)),
    "flip": lambda im: im[:, :, ::-1],
    "flipud": lambda im: im[:, ::-1, :],
    "transpose": lambda im: im.transpose(0, 2, 1),
}


def _digits_halves(half_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images float32[n, 8, 8] in [0, 1], labels, source rows, target rows): a seeded half
    of every digit's images for each side."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng([half_seed, 31337])
    source, target = [], []
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        source.append(rows[: len(rows) // 2])
        target.append(rows[len(rows) // 2 :])
    return images, labels, np.sort(np.concatenate(source)), np.sort(np.concatenate(target))


def _check_transforms(transforms) -> list[str]:
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown or not transforms:
        raise DataError(
            f"digits_source: unknown transform {unknown[0] if unknown else None!r}; "
            f"choose from {', '.join(TRANSFORMS)}"
        )
    return list(transforms)


def digits_source(
    transforms: list[str] = ("upright", "rot90", "flip"), mixed: int = 4, half_seed: int = 0,
    test_fraction: float = 0.1, images: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32[N, 64], source class int64[N], is_test bool[N]): class
    ``t * 10 + d`` is digit d under ``transforms[t]``; the last ``mixed`` classes each hold
    an equal share of the half's upright digits, every identity under one label. A seeded
    ``test_fraction`` of every class is its test split (unused by transfer runs).
    ``images``: the features as uint8 images [N, 8, 8, 1] (for conv nets)."""
    transforms = _check_transforms(transforms)
    pixels, labels, source, _ = _digits_halves(half_seed)
    xs, ys = [], []
    for t, name in enumerate(transforms):
        xs.append(np.ascontiguousarray(TRANSFORMS[name](pixels[source])))
        ys.append(t * 10 + labels[source])
    if mixed:
        rng = np.random.default_rng([half_seed, 271828])
        order = rng.permutation(len(source))
        xs.append(pixels[source][order])
        ys.append(len(transforms) * 10 + np.arange(len(source)) % mixed)
    features = np.concatenate(xs).reshape(-1, 64)
    classes = np.concatenate(ys).astype(np.int64)
    rng = np.random.default_rng([half_seed, 4242])
    is_test = rng.random(len(classes)) < test_fraction
    return _as_images(features) if images else features, classes, is_test


def _as_images(features: np.ndarray) -> np.ndarray:
    """float32[N, 64] in [0, 1] -> uint8 images [N, 8, 8, 1]."""
    return np.round(features * 255).astype(np.uint8).reshape(-1, 8, 8, 1)


def _source_names(
    transforms: list[str] = ("upright", "rot90", "flip"), mixed: int = 4, **_: object
) -> list[str]:
    names = [f"{t} {d}" for t in _check_transforms(transforms) for d in range(10)]
    return names + [f"mixed {j}" for j in range(mixed)]


digits_source.class_names = _source_names  # type: ignore[attr-defined]


def digits_target(
    train_per_class: int = 10, half_seed: int = 0, images: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32[N, 64], digit int64[N], is_test bool[N]): the other half of the
    digits, upright; the first ``train_per_class`` of every digit (seeded) are the transfer
    set, the rest the test split. ``images``: uint8 images [N, 8, 8, 1] (for conv nets)."""
    pixels, labels, _, target = _digits_halves(half_seed)
    rng = np.random.default_rng([half_seed, 1618])
    is_test = np.ones(len(target), dtype=bool)
    for digit in range(10):
        rows = np.flatnonzero(labels[target] == digit)
        is_test[rng.permutation(rows)[:train_per_class]] = False
    features = pixels[target].reshape(-1, 64)
    return _as_images(features) if images else features, labels[target], is_test


digits_target.class_names = lambda **_: [str(d) for d in range(10)]  # type: ignore[attr-defined]


def transfer_dataset(source: ArrayDataset, target: ArrayDataset) -> tuple[ArrayDataset, int]:
    """One dataset for the beton: the source's train split first (labels: source classes),
    then every target example. Returns it and the number of source rows."""
    src = np.flatnonzero(~source.is_test)
    if source.features.shape[1:] != target.features.shape[1:] or (
        source.features.dtype != target.features.dtype
    ):
        raise DataError(
            f"transfer.source examples are {source.features.dtype}{list(source.features.shape[1:])}"
            f" but the target's (dataset) are {target.features.dtype}"
            f"{list(target.features.shape[1:])}; give both the same input shape"
        )
    missing = np.setdiff1d(np.arange(source.num_classes), source.labels[src])
    if len(missing):
        raise DataError(
            f"transfer.source: source class(es) {missing[:5].tolist()} have no train examples; "
            "every source class needs at least one (relabel them 0..C-1 without gaps)"
        )
    features = np.concatenate([source.features[src], target.features])
    labels = np.concatenate([source.labels[src], target.labels])
    is_test = np.concatenate([np.zeros(len(src), bool), target.is_test])
    combined = ArrayDataset(
        f"{source.name}->{target.name}", features, labels, is_test,
        max(source.num_classes, target.num_classes),
    )
    return combined, len(src)


def transfer_examples(combined: ArrayDataset, n_source: int) -> pd.DataFrame:
    """``examples.parquet`` of a transfer run (the module docstring's layout)."""
    n = len(combined)
    is_source = np.arange(n) < n_source
    is_test = combined.is_test & ~is_source
    eval_position = np.full(n, -1, dtype=np.int64)
    eval_position[is_test] = np.arange(int(is_test.sum()))
    train_position = np.where(is_source, combined.labels, -1)
    return pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "split": np.where(is_source, "source", np.where(is_test, "test", "train")),
            "label": combined.labels.astype(np.int64),
            "original_label": combined.labels.astype(np.int64),
            "eval_position": pd.array(
                np.where(eval_position >= 0, eval_position, None), dtype="Int64"
            ),
            "train_position": pd.array(
                np.where(train_position >= 0, train_position, None), dtype="Int64"
            ),
        }
    )


def source_classes_frame(source: ArrayDataset) -> pd.DataFrame:
    """``transfer/source_classes.parquet``: name and train-example count of every class."""
    counts = np.bincount(source.labels[~source.is_test], minlength=source.num_classes)
    names = source.class_names or [f"class {c}" for c in range(source.num_classes)]
    return pd.DataFrame(
        {
            "train_position": np.arange(source.num_classes, dtype=np.int64),
            "name": [str(n) for n in names[: source.num_classes]],
            "n_examples": counts.astype(np.int64),
        }
    )
