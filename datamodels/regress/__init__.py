"""LASSO path solver for datamodels: batched over targets, chunked over mask rows, CPU or GPU.

``lasso_path`` fits full paths; ``lasso_select`` picks λ per target on held-out rows and
refits; ``DatamodelRegressor`` is a thin estimator on top. See ``lasso`` for the objective.
"""

from datamodels.regress.lasso import (
    LassoPath,
    LassoSelection,
    lasso_path,
    lasso_select,
    split_rows,
)
from datamodels.regress.regressor import DatamodelRegressor

__all__ = [
    "DatamodelRegressor",
    "LassoPath",
    "LassoSelection",
    "lasso_path",
    "lasso_select",
    "split_rows",
]
