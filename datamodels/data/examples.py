"""The ``examples`` table: which example is train or test, and its train/eval position.

Train positions number the train split in index order (``mask[i]`` refers to
``train_position == i``). Evaluation positions put the test split first, then (when
``eval_train``) the train split in train-position order, so margins on train examples serve
self-influence and memorization.

Where the source says where each example came from, two more columns: ``source_path`` (the
file, relative to ``dataset.path``: ``imagefolder``) and ``class_name`` (the name of the
example's label, for sources that name their classes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.data.sources import ArrayDataset


def examples_frame(ds: ArrayDataset, eval_train: bool = True) -> pd.DataFrame:
    n = len(ds)
    train_index = np.flatnonzero(~ds.is_test)
    test_index = np.flatnonzero(ds.is_test)
    train_position = np.full(n, -1, dtype=np.int64)
    train_position[train_index] = np.arange(len(train_index))
    eval_position = np.full(n, -1, dtype=np.int64)
    eval_position[test_index] = np.arange(len(test_index))
    if eval_train:
        eval_position[train_index] = len(test_index) + np.arange(len(train_index))
    frame = pd.DataFrame(
        {
            "index": np.arange(n, dtype=np.int64),
            "split": np.where(ds.is_test, "test", "train"),
            "label": ds.labels.astype(np.int64),
            "original_label": np.asarray(ds.original_labels, dtype=np.int64),
            "eval_position": pd.array(
                np.where(eval_position >= 0, eval_position, None), dtype="Int64"
            ),
            "train_position": pd.array(
                np.where(train_position >= 0, train_position, None), dtype="Int64"
            ),
        }
    )
    paths = ds.source_paths
    if paths is not None:
        frame["source_path"] = pd.array(list(paths), dtype="string")
    if paths is not None and ds.class_names is not None:
        names = np.asarray(ds.class_names, dtype=object)
        frame["class_name"] = pd.array(names[ds.labels.astype(np.int64)], dtype="string")
    return frame


def train_and_eval_index(examples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(example index int64[n_train] in train-position order, int64[n_eval] in eval order)."""
    train = examples[examples["train_position"].notna()].sort_values("train_position")
    evals = examples[examples["eval_position"].notna()].sort_values("eval_position")
    return train["index"].to_numpy(np.int64), evals["index"].to_numpy(np.int64)
