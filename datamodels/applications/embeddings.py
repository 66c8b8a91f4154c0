"""Datamodel embeddings: test targets as their weight vectors θ_t ∈ R^{n_train}.

Targets that depend on the same training points have aligned vectors, so the top principal
components of the (row-normalised) weight matrix separate subpopulations, and spectral
clustering on the cosine affinity max(0, cos(θ_s, θ_t)) groups them (Ilyas et al. 2022, §5.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from datamodels.applications.tables import split_scores
from datamodels.store import Run


@dataclass(frozen=True)
class Embedding:
    """targets: int[T]; coordinates: float[T, k] (projection on each component);
    components: float[k, n_train] (unit loadings); explained: float[k] (variance ratio)."""

    targets: np.ndarray
    coordinates: np.ndarray
    components: np.ndarray
    explained: np.ndarray


def _normalise(weights: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(weights, axis=1, keepdims=True)
    return np.divide(weights, norms, out=np.zeros_like(weights), where=norms > 0)


def embed(
    weights: np.ndarray, n_components: int = 2, targets: np.ndarray | None = None
) -> Embedding:
    """Top principal components of the row-normalised, centred weights: float[T, n_train].

    The sign of each component is fixed so that its largest loading is positive (a
    deterministic answer for the same table).
    """
    unit = _normalise(np.asarray(weights, dtype=np.float64))
    centred = unit - unit.mean(0, keepdims=True)
    k = max(0, min(n_components, *centred.shape))
    # one BLAS thread: a T x n SVD this size takes ~0.05 s either way on a quiet machine, but
    # OpenBLAS's spinning threads made it ~7 s on 2 busy cores
    with threadpool_limits(limits=1, user_api="blas"):
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:k]
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    total = float((singular**2).sum())
    explained = singular[:k] ** 2 / total if total > 0 else np.zeros(k)
    targets = np.arange(len(unit)) if targets is None else np.asarray(targets)
    return Embedding(targets, centred @ components.T, components, explained)


def extremes(coordinates: np.ndarray, k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per component, (rows with the k lowest coordinates, rows with the k highest),
    each ordered from the extreme inwards. coordinates: float[T, n_components]."""
    out = []
    for column in np.asarray(coordinates).T:
        order = np.argsort(column, kind="stable")
        out.append((order[:k], order[::-1][:k]))
    return out


def spectral_clusters(weights: np.ndarray, n_clusters: int = 2, seed: int = 0) -> np.ndarray:
    """Cluster label int[T] of each target, spectral clustering on the cosine affinity."""
    from sklearn.cluster import SpectralClustering

    unit = _normalise(np.asarray(weights, dtype=np.float64))
    affinity = np.clip(unit @ unit.T, 0.0, None)
    np.fill_diagonal(affinity, 1.0)
    model = SpectralClustering(n_clusters, affinity="precomputed", random_state=seed)
    return model.fit_predict(affinity).astype(np.int64)


def embedding_from_run(run: Run, method: str = "datamodels", n_components: int = 2) -> Embedding:
    """The embedding of the run's test targets by ``scores/<method>.parquet``."""
    split = split_scores(run, method)
    return embed(split.test_scores, n_components, split.test_targets)
