"""Where the evaluation targets sit in a run's margins: the columns of each split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datamodels.store.run import Run


def eval_positions(run: Run, which: str) -> np.ndarray:
    """Sorted eval positions of the ``test`` or ``train`` split, or of all of them (``all``)."""
    examples = run.examples()
    chosen = examples[examples["eval_position"].notna()]
    if which != "all":
        chosen = chosen[chosen["split"] == which]
    return np.sort(chosen["eval_position"].to_numpy(np.int64))
