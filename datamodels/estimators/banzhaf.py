"""Data Banzhaf by Maximum Sample Reuse (Wang & Jia 2023).

    β(i, t) = 2^{-(n-1)} Σ_{S ⊆ N∖i} [U_t(S ∪ i) − U_t(S)]
            = E_{S ~ Ber(½)}[U_t(S) | i ∈ S] − E_{S ~ Ber(½)}[U_t(S) | i ∉ S]

MSR estimates both expectations from the same models trained on subsets drawn with inclusion
probability ½, which is exactly downsampling at α = ½; so this module only composes.
"""

from __future__ import annotations

import numpy as np

from datamodels.estimators.base import EstimatorInputError, Scores, as_row_vector
from datamodels.estimators.diffmeans import DEFAULT_CHUNK_ROWS
from datamodels.estimators.downsampling import downsampling

# Float32 storage of alpha = 0.5 is exact; the tolerance only forgives arithmetic upstream.
_HALF_TOLERANCE = 1e-6


def banzhaf(
    masks: np.ndarray,
    margins: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Scores:
    """MSR Banzhaf values of every training point for every target.

    masks: bool[m, n_train] drawn with inclusion probability ½; margins: float[m, T];
    alpha: optional float[m] per-model inclusion probability, checked to be ½ (a table of
    another α would silently give a different semivalue).
    Returns `Scores` with values, stderr float32[T, n_train] — identical to
    ``downsampling(masks, margins)``.
    """
    if alpha is not None:
        alpha = as_row_vector(alpha, np.shape(masks)[0], "alpha", np.float64)
        off = np.flatnonzero(np.abs(alpha - 0.5) > _HALF_TOLERANCE)
        if off.size:
            raise EstimatorInputError(
                f"banzhaf needs models trained with alpha = 0.5; row {int(off[0])} has alpha "
                f"{alpha[off[0]]:g} — select the rows of an alpha = 0.5 plan"
            )
    return downsampling(masks, margins, chunk_rows=chunk_rows)
