"""The datamodel regression every caller shares: one LASSO datamodel per margin column, λ
chosen on a seeded validation fraction of the models and refit on all of them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from datamodels.devices import resolve_device
from datamodels.regress.lasso import LassoSelection, lasso_select, split_rows

if TYPE_CHECKING:
    from datamodels.config import FitConfig

# The code version of the datamodels' numbers (``fit``'s tables): bump it with any change that
# can move a weight for the same models and settings; the fit stage's digest holds it.
VERSION = 1


def min_models(fit: FitConfig) -> int:
    """The fewest models a fit needs: at least two validation rows at ``fit.val_fraction``."""
    return int(np.ceil(2 / fit.val_fraction)) + 2


def fit_datamodels(masks: np.ndarray, margins: np.ndarray, fit: FitConfig) -> LassoSelection:
    """The fit stage's regression on any table of models: masks bool[m, n], margins
    float[m, T] -> one LASSO datamodel per column, λ chosen on the seeded validation fraction
    of the rows (``fit.val_fraction``, ``fit.split_seed``) and refit on all rows."""
    return lasso_select(
        masks,
        margins,
        split_rows(len(masks), fit.val_fraction, fit.split_seed),
        n_lambdas=fit.n_lambdas,
        eps=fit.eps,
        patience=fit.patience,
        tol=fit.tol,
        device=resolve_device(fit.device),
    )
