"""Path solvers: the LASSO of datamodels (batched over targets, chunked over mask rows, CPU or
GPU) and the elastic-net multinomial GLM of sparse decision layers (``glm_path``), sharing the
λ grid, proximal steps and FISTA momentum (``prox``).

``lasso_path`` fits full paths; ``lasso_select`` picks λ per target on held-out rows and
refits; ``DatamodelRegressor`` is a thin estimator on top. See ``lasso`` for the objective.
"""

from datamodels.regress.glm import GlmPath, glm_path
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
    "GlmPath",
    "LassoPath",
    "LassoSelection",
    "glm_path",
    "lasso_path",
    "lasso_select",
    "split_rows",
]
