"""Positions in a run's tables: the eval targets' margin columns of each split, and n_train
(the mask length) from the train positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from datamodels.store.run import Run


def eval_positions(run: Run, which: str) -> np.ndarray:
    """Sorted eval positions of the ``test`` or ``train`` split, or of all of them (``all``)."""
    examples = run.examples()
    chosen = examples[examples["eval_position"].notna()]
    if which != "all":
        chosen = chosen[chosen["split"] == which]
    return np.sort(chosen["eval_position"].to_numpy(np.int64))


def train_size(train_position: pa.ChunkedArray) -> int:
    """n_train (the mask length) from ``examples.parquet``'s ``train_position`` column: one
    more than its largest value (a transfer run's source classes are shared by their
    examples; otherwise every train example has its own position)."""
    train = train_position.drop_null().to_numpy()
    return int(train.max()) + 1 if len(train) else 0
