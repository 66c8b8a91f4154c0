"""Retraining-based attribution estimators: pure functions over the masks/margins table.

Inputs are plain arrays — ``masks: bool[m, n_train]`` (model r's training subset),
``margins: float[m, T]`` (model r's margin or 0/1 correctness on T targets) and per-model
metadata (``alpha``, permutation ``perm_id``/``step``/``added``, ``left_out``). Every
estimator returns a `Scores` (values float32[T, n_train], stderr, n_models) with the sign
convention **positive = including training point i raises target t's margin**, and never NaN.

| function            | paper                          | module          |
|---------------------|--------------------------------|-----------------|
| `downsampling`      | Feldman & Zhang 2020           | downsampling.py |
| `memorization`      | Feldman & Zhang 2020           | downsampling.py |
| `banzhaf`           | Wang & Jia 2023 (MSR)          | banzhaf.py      |
| `shapley`           | Owen 1972 multilinear sampling | shapley.py      |
| `beta_shapley`      | Kwon & Zou 2022                | shapley.py      |
| `tmc_shapley`       | Ghorbani & Zou 2019            | tmc.py          |
| `loo`               | leave-one-out retraining       | loo.py          |
| `paired_loo`        | LOO, seed-paired differences   | loo.py          |
| `knn_shapley`       | Jia et al. 2019                | knn_shapley.py  |
"""

from datamodels.estimators.banzhaf import banzhaf
from datamodels.estimators.base import EstimatorInputError, Scores
from datamodels.estimators.diffmeans import difference_of_means
from datamodels.estimators.downsampling import downsampling, memorization
from datamodels.estimators.knn_shapley import knn_shapley
from datamodels.estimators.loo import loo, loo_differences, paired_loo
from datamodels.estimators.shapley import beta_shapley, owen_grid, owen_semivalue, shapley
from datamodels.estimators.tmc import tmc_permutation, tmc_prefix_masks, tmc_shapley

__all__ = [
    "EstimatorInputError",
    "Scores",
    "banzhaf",
    "beta_shapley",
    "difference_of_means",
    "downsampling",
    "knn_shapley",
    "loo",
    "loo_differences",
    "memorization",
    "owen_grid",
    "owen_semivalue",
    "paired_loo",
    "shapley",
    "tmc_permutation",
    "tmc_prefix_masks",
    "tmc_shapley",
]
