"""The ``digits`` source: scikit-learn's 1,797 8×8 digits (shipped with it), flat features
and a seeded ``test_fraction`` split."""

from __future__ import annotations

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.dataset import ArrayDataset, seeded_split


def load_digits_dataset(cfg: DatasetConfig) -> ArrayDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    is_test = seeded_split(len(labels), cfg.test_fraction, cfg.split_seed)
    return ArrayDataset("digits", features, labels, is_test, 10)
