"""HyDRA (Chen et al. 2021, "Hydra: Hypergradient Data Relevance Analysis"): the hypergradient
of the trained model in each example's loss weight, traced through every SGD step with the
Hessian terms dropped — the approximation the paper uses to make the tracing affordable.

Dropping H_s from the metagradient recursion (``gradients.metagradient``) leaves a linear
recursion in the optimiser alone (momentum μ, weight decay λ, lr η_s):

    dθ_S/dw_i ≈ −Σ_{s: i∈β_s} K_s ∇ℓ_i(θ_s) / c_s,

with K_s the (exact, scalar) propagator of an update at step s through the momentum and
weight-decay steps to the end, and score[t, i] = ∇m_t(θ_S)·dθ_S/dw_i. The paper traces
dθ/dw forward for every i at once; run backwards from the targets (the same linear map,
transposed) the numbers are identical and the memory is T·P instead of n·P. Positive =
helpful, as everywhere in the package.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodels.gradients.metagradient import Trajectory, metagradient_scores


def hydra_scores(
    trajectory: Trajectory, train_x: torch.Tensor, train_y: torch.Tensor,
    target_x: torch.Tensor, target_y: torch.Tensor, weights: np.ndarray | None = None,
) -> torch.Tensor:
    """float64[T, n_train]: HyDRA's hypergradient scores on a replayed run
    (``metagradient.replay_mlp``) for targets ``target_x[T, ...]``, ``target_y[T]``."""
    return metagradient_scores(
        trajectory, train_x, train_y, target_x, target_y, weights, hessian=False
    )
