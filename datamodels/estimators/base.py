"""What every estimator returns (`Scores`) and input validation (raising `EstimatorInputError`).

Every estimator is a pure function over plain arrays and returns a `Scores`:
``values: float32[T, n_train]`` with the run-wide sign convention **positive = including
training point i raises target t's margin** (helpful), an optional standard error of the same
shape, and the number of trained models the estimate rests on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodels.errors import EstimatorInputError


@dataclass(frozen=True)
class Scores:
    """An attribution table.

    values: float32[T, n_train] (float32[n_train] for memorization / self-influence),
        positive = including the training point helps the target. Never NaN: a score that
        the table cannot identify (e.g. a training point that is in every model) is 0.
    stderr: float32[T, n_train] or None. ``inf`` exactly where the table cannot estimate
        the uncertainty (a group with fewer than two models) — such scores should not be
        trusted. None for exact (closed-form) estimators.
    n_models: number of trained models (table rows) used; 0 for closed forms.
    """

    values: np.ndarray
    stderr: np.ndarray | None
    n_models: int

    def __post_init__(self) -> None:
        if self.stderr is not None and self.stderr.shape != self.values.shape:
            raise EstimatorInputError(
                f"Scores.stderr has shape {self.stderr.shape}, values {self.values.shape}"
            )


def as_masks(masks: np.ndarray, name: str = "masks") -> np.ndarray:
    """bool[m, n_train] view of ``masks`` (bool or 0/1 integers), checked."""
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise EstimatorInputError(f"{name} must be 2-D [models, n_train], got shape {masks.shape}")
    if masks.dtype != np.bool_:
        if not np.issubdtype(masks.dtype, np.integer) or not np.isin(masks, (0, 1)).all():
            raise EstimatorInputError(f"{name} must be bool or 0/1 integers, got {masks.dtype}")
        masks = masks.astype(bool)
    return masks


def as_margins(margins: np.ndarray, n_rows: int, name: str = "margins") -> np.ndarray:
    """float[m, T] view of ``margins`` with ``n_rows`` rows (1-D input is one target).

    Finiteness is checked block by block where the rows are read (`check_finite`), so a
    memory-mapped table is never materialised just to validate it.
    """
    margins = np.asarray(margins)
    if margins.ndim == 1:
        margins = margins[:, None]
    if margins.ndim != 2 or margins.shape[0] != n_rows:
        raise EstimatorInputError(
            f"{name} must be [models, targets] with {n_rows} rows (one per mask), "
            f"got shape {margins.shape}"
        )
    if not (np.issubdtype(margins.dtype, np.floating) or np.issubdtype(margins.dtype, np.integer)
            or margins.dtype == np.bool_):
        raise EstimatorInputError(f"{name} must be numeric, got {margins.dtype}")
    return margins


def check_finite(block: np.ndarray, row_ids: np.ndarray, name: str = "margins") -> None:
    """Raise naming the first model row whose margins are NaN/inf (a diverged model)."""
    finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
    if not finite.all():
        bad = int(row_ids[np.flatnonzero(~finite)[0]])
        raise EstimatorInputError(
            f"{name} row {bad} is not finite (a diverged model?); drop it before estimating"
        )


def as_row_vector(values: np.ndarray, n_rows: int, name: str, dtype: type) -> np.ndarray:
    """1-D per-model metadata array of length ``n_rows`` converted to ``dtype``."""
    values = np.asarray(values)
    if values.shape != (n_rows,):
        raise EstimatorInputError(
            f"{name} must have one entry per model ({n_rows}), got shape {values.shape}"
        )
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        raise EstimatorInputError(f"{name} must be integers, got {values.dtype}")
    return values.astype(dtype, copy=False)


def to_scores(values: np.ndarray, stderr: np.ndarray | None, n_models: int) -> Scores:
    """Package float64 results as float32 `Scores`, keeping the no-NaN promise explicit."""
    values32 = np.ascontiguousarray(values, dtype=np.float32)
    stderr32 = None if stderr is None else np.ascontiguousarray(stderr, dtype=np.float32)
    if np.isnan(values32).any() or (stderr32 is not None and np.isnan(stderr32).any()):
        raise AssertionError("estimator produced NaN; this is a bug in datamodels.estimators")
    return Scores(values=values32, stderr=stderr32, n_models=int(n_models))
