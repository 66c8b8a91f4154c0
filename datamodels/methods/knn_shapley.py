"""``knn_shapley`` (Jia et al. 2019): the exact Shapley value of each training point for the
K-nearest-neighbour classifier's correctness on the target (K = ``estimate.knn_k``), from the
input features (no models); it writes scores only."""

from __future__ import annotations

import numpy as np

from datamodels import estimators as est
from datamodels.errors import EstimateError
from datamodels.methods.base import Features, RetrainingMethod
from datamodels.methods.traits import is_transfer


class KnnShapley(RetrainingMethod):
    name = "knn_shapley"
    source = "features"
    writes = ("scores",)

    def check(self) -> None:
        if is_transfer(self.config):
            raise EstimateError(
                "knn_shapley ranks training examples by their inputs; a transfer run's "
                "training points are source classes"
            )

    def settings(self) -> dict:
        return {"knn_k": self.config.estimate.knn_k}

    def scores(self, features: Features, targets: np.ndarray) -> est.Scores:
        x, labels, train = features.x, features.labels, features.train_index
        rows = features.eval_index[targets]
        return est.knn_shapley(
            x[train], labels[train], x[rows], labels[rows], self.config.estimate.knn_k
        )
