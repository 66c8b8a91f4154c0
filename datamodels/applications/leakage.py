"""Leakage candidates: train/test pairs that look like near-duplicates to the datamodels.

Two rankings (Ilyas et al. 2022, §5.2):

* by weight: pairs (t, i) with the largest datamodel weight w_t,i — a test example whose
  prediction rests on one training example far more than on any other;
* by cosine similarity of datamodel vectors: cos(θ_t, θ_i) where θ_t is the test target's
  weight vector and θ_i the training example's own datamodel (its row among the eval
  targets, ``dataset.eval_train``). Duplicates depend on the same training points, so their
  vectors align even where neither weight is the largest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.applications.tables import split_scores
from datamodels.store import Run


def top_weight_pairs(
    test_scores: np.ndarray, test_targets: np.ndarray | None = None, k: int = 20
) -> pd.DataFrame:
    """The ``k`` (target, train_position) pairs with the largest weight, largest first.

    test_scores: float[T, n_train]; test_targets: int[T] (default 0..T-1).
    Returns columns target, train_position, weight, rank (0 = largest).
    """
    scores = np.asarray(test_scores, dtype=np.float64)
    targets = np.arange(len(scores)) if test_targets is None else np.asarray(test_targets)
    flat = scores.ravel()
    k = min(k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k] if k else np.array([], dtype=np.int64)
    top = top[np.argsort(-flat[top], kind="stable")]
    rows, cols = np.unravel_index(top, scores.shape)
    return pd.DataFrame(
        {
            "target": targets[rows].astype(np.int64),
            "train_position": cols.astype(np.int64),
            "weight": flat[top],
            "rank": np.arange(len(top)),
        }
    )


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def cosine_pairs(
    test_scores: np.ndarray,
    train_rows: np.ndarray,
    test_targets: np.ndarray | None = None,
    k: int = 20,
) -> pd.DataFrame:
    """The ``k`` (target, train_position) pairs with the most similar datamodel vectors.

    test_scores: float[T, n_train]; train_rows: float[n_train, n_train] (row i = training
    example i's datamodel). A zero vector has similarity 0 with everything.
    Returns columns target, train_position, cosine, rank (0 = most similar).
    """
    similarity = (
        _unit_rows(np.asarray(test_scores, np.float64))
        @ _unit_rows(np.asarray(train_rows, np.float64)).T
    )  # [T, n_train]
    ranked = top_weight_pairs(similarity, test_targets, k)
    return ranked.rename(columns={"weight": "cosine"})


def leakage_from_run(run: Run, method: str = "datamodels", k: int = 20) -> dict[str, pd.DataFrame]:
    """{"weight": pairs by weight, "cosine": pairs by cosine (empty without train rows)}."""
    split = split_scores(run, method)
    by_weight = top_weight_pairs(split.test_scores, split.test_targets, k)
    if split.train_rows is None:
        by_cosine = pd.DataFrame(columns=["target", "train_position", "cosine", "rank"])
    else:
        by_cosine = cosine_pairs(split.test_scores, split.train_rows, split.test_targets, k)
    return {"weight": by_weight, "cosine": by_cosine}
