"""``ArrayDataset``: what every dataset source returns, and the helpers the sources share.

All examples in one array in a fixed order (the example ``index``), their labels and each
one's split; ``seeded_split`` draws a split where the source gives none, ``split_column``
reads a user's 'train'/'test' column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodels.errors import DataError


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
    source_paths: list[str] | None = None  # per example, where the source names its files

    def __post_init__(self) -> None:
        if self.original_labels is None:
            self.original_labels = self.labels.copy()

    @property
    def is_image(self) -> bool:
        return self.features.ndim == 4

    def __len__(self) -> int:
        return len(self.labels)


def seeded_split(n: int, test_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_test = int(round(n * test_fraction))
    is_test = np.zeros(n, dtype=bool)
    is_test[rng.permutation(n)[:n_test]] = True
    return is_test


def first_rows(rows: np.ndarray, show: int = 5) -> str:
    listed = ", ".join(str(int(r)) for r in rows[:show])
    return listed + (", ..." if len(rows) > show else "")


def split_column(split: np.ndarray, n: int, path: Path) -> np.ndarray:
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
            f"(rows {first_rows(rows)}); relabel those rows 'train' or 'test'"
        )
    return split == "test"
