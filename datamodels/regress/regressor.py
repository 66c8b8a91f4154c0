"""``DatamodelRegressor``: a scikit-learn style estimator over ``lasso_select``."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.regress.design import MaskArray
from datamodels.regress.lasso import lasso_select, split_rows


class DatamodelRegressor:
    """Thin estimator over ``lasso_select`` (scikit-learn style; learned attributes end in _).

    ``options`` are ``lasso_select``'s keyword arguments (n_lambdas, eps, patience, tol,
    device, dtype, ...); ``val_fraction`` and ``seed`` make the default split.
    """

    def __init__(self, *, val_fraction: float = 0.1, seed: int = 0, **options: object) -> None:
        self.val_fraction, self.seed, self.options = val_fraction, seed, options

    def fit(
        self,
        masks: MaskArray,
        margins: np.ndarray,
        split: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    ) -> DatamodelRegressor:
        """Fit on bool[M, n] masks and float[M, T] margins; split defaults to a random
        ``val_fraction`` of the rows (``split_rows``)."""
        if split is None:
            split = split_rows(masks.shape[0], self.val_fraction, self.seed)
        self.result_ = lasso_select(masks, margins, split, **self.options)  # type: ignore[arg-type]
        self.coef_, self.intercept_, self.lam_ = (
            self.result_.weights,
            self.result_.bias,
            self.result_.lam,
        )
        return self

    def predict(self, masks: MaskArray) -> np.ndarray:
        """float32[m, T] predicted margins for bool[m, n] masks (row chunks of 4096)."""
        mask_np = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else masks
        out = np.empty((mask_np.shape[0], self.coef_.shape[0]), dtype=np.float32)
        for start in range(0, mask_np.shape[0], 4096):
            chunk = mask_np[start : start + 4096].astype(np.float32)
            out[start : start + 4096] = chunk @ self.coef_.T + self.intercept_
        return out
