"""TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale", Algorithm 1).

For each of M models θ_m (e.g. trained on α-subsets of the training set):

* output function f(z; θ) = log(p_y / (1 − p_y)) (the paper's multi-class margin, §3.2;
  ``output="margin"`` uses the project's correct − largest-other logit instead);
* features φ_m(z) = Pᵀ ∇_θ f(z; θ_m), P ∈ R^{P×k} a seeded random projection with i.i.d.
  N(0, 1/k) (``"gaussian"``) or ±1/√k (``"rademacher"``) entries (a fresh one per model);
* Φ_m = [φ_m(z_1); …; φ_m(z_n)] ∈ R^{n×k}, Q_m = diag(1 − p_y(z_i; θ_m)) (the
  "one minus correct-class probability" reweighting).

    τ(z_t)ᵢ = [ (1/M) Σ_m φ_m(z_t)ᵀ (Φ_mᵀΦ_m + λI)⁻¹ Φ_mᵀ ] · [ (1/M) Σ_m Q_m ]ᵢᵢ

(Algorithm 1 averages the two factors separately; the soft-thresholding step is left out:
scores are dense). λ = 0 uses the pseudo-inverse, which is the λ → 0 limit.

Sign: for the TRAK output f, ∇ℓ(z) = −(1 − p_y)∇f(z), so Φᵀ Q has columns −Pᵀ∇ℓ(z_i) and
τ(z_t)ᵢ = −φ(z_t)ᵀ(ΦᵀΦ)⁻¹Pᵀ∇ℓ(z_i): the influence score of ``influence.py``,
−(1/n)·∇u_tᵀH⁻¹∇ℓ(z_i), with u = f and H replaced by the projected ΦᵀΦ/n, so positive =
including z_i raises f(z_t) (helpful).

Exact identity (tested): with one model, k ≥ P (P full row rank a.s.) and λ → 0, the
projection drops out on the span G of the training gradients:
τ(z_t)ᵢ = −∇f_tᵀ (GᵀG)⁺ ∇ℓ(z_i), G = [∇f(z_1); …; ∇f(z_n)], whenever ∇f_t lies in span(Gᵀ)
(e.g. n ≥ P); that is the influence score with utility f and the Hessian replaced by the
output-gradient Gauss–Newton matrix GᵀG/n.

Self scores (mislabel detection): τ(z_i)ᵢ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from datamodels.gradients.grads import per_example_grads, per_example_outputs
from datamodels.gradients.model import FunctionalModel

ProjectionKind = Literal["gaussian", "rademacher"]
TrakOutput = Literal["trak", "margin"]


def projection_matrix(num_params: int, dim: int, seed: int, kind: ProjectionKind = "gaussian") -> torch.Tensor:
    """float64[P, k] with E[P Pᵀ] = I."""
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "gaussian":
        return torch.randn(num_params, dim, generator=gen, dtype=torch.float64) / dim**0.5
    if kind == "rademacher":
        signs = torch.randint(0, 2, (num_params, dim), generator=gen).to(torch.float64) * 2 - 1
        return signs / dim**0.5
    raise ValueError(f"projection kind must be 'gaussian' or 'rademacher'; got {kind!r}")


def trak_features(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, projection: torch.Tensor,
    output: TrakOutput = "trak", chunk_size: int = 256,
) -> torch.Tensor:
    """φ(z_i) = Pᵀ ∇_θ f(z_i): float64[n, k] (gradients projected chunk by chunk)."""
    chunks = [
        per_example_grads(model, x[s : s + chunk_size], y[s : s + chunk_size], output, chunk_size=chunk_size) @ projection
        for s in range(0, len(x), chunk_size)
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, projection.shape[1], dtype=torch.float64)


def _kernel_inverse(features: torch.Tensor, damping: float) -> torch.Tensor:
    gram = features.T @ features
    if damping > 0:
        return torch.linalg.inv(gram + damping * torch.eye(gram.shape[0], dtype=gram.dtype))
    return torch.linalg.pinv(gram, hermitian=True)


def _one_minus_p(model: FunctionalModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.exp(-per_example_outputs(model, x, y, "loss"))


def trak_scores(
    models: Sequence[FunctionalModel], train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, proj_dim: int, seed: int = 0, kind: ProjectionKind = "gaussian",
    damping: float = 0.0, output: TrakOutput = "trak", chunk_size: int = 256,
) -> torch.Tensor:
    """τ: float64[T, n] for train_x[n, ...], train_y[n], target_x[T, ...], target_y[T],
    ensembled over ``models`` (projection seed ``seed + m`` for model m)."""
    if not models:
        raise ValueError("models is empty: pass at least one trained FunctionalModel")
    if proj_dim < 1:
        raise ValueError(f"proj_dim must be >= 1; got {proj_dim}")
    attribution = torch.zeros(len(target_x), len(train_x), dtype=torch.float64)
    reweight = torch.zeros(len(train_x), dtype=torch.float64)
    for m, model in enumerate(models):
        projection = projection_matrix(model.num_params, proj_dim, seed + m, kind)
        phi_train = trak_features(model, train_x, train_y, projection, output, chunk_size)
        phi_target = trak_features(model, target_x, target_y, projection, output, chunk_size)
        attribution += phi_target @ _kernel_inverse(phi_train, damping) @ phi_train.T
        reweight += _one_minus_p(model, train_x, train_y)
    return (attribution / len(models)) * (reweight / len(models))


def trak_self_scores(
    models: Sequence[FunctionalModel], train_x: torch.Tensor, train_y: torch.Tensor, *, proj_dim: int,
    seed: int = 0, kind: ProjectionKind = "gaussian", damping: float = 0.0, output: TrakOutput = "trak",
    chunk_size: int = 256,
) -> torch.Tensor:
    """τ(z_i)ᵢ: float64[n]."""
    if not models:
        raise ValueError("models is empty: pass at least one trained FunctionalModel")
    leverage = torch.zeros(len(train_x), dtype=torch.float64)
    reweight = torch.zeros(len(train_x), dtype=torch.float64)
    for m, model in enumerate(models):
        projection = projection_matrix(model.num_params, proj_dim, seed + m, kind)
        phi = trak_features(model, train_x, train_y, projection, output, chunk_size)
        leverage += ((phi @ _kernel_inverse(phi, damping)) * phi).sum(1)
        reweight += _one_minus_p(model, train_x, train_y)
    return (leverage / len(models)) * (reweight / len(models))
