"""TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale", Algorithm 1).

For each of M models θ_m (e.g. trained on α-subsets of the training set):

* output function f(z; θ) = log(p_y / (1 − p_y)) (the paper's multi-class margin, §3.2;
  ``output="margin"`` uses the project's correct − largest-other logit instead);
* features φ_m(z) = Rᵀ ∇_θ f(z; θ_m), R ∈ R^{P×k} a seeded random projection with i.i.d.
  N(0, 1/k) (``"gaussian"``) or ±1/√k (``"rademacher"``) entries (a fresh one per model),
  applied block by block and never held whole (``projection.py``: memory O(block × k),
  float32 or bfloat16 products, float64 products only for the exact references);
* Φ_m = [φ_m(z_1); …; φ_m(z_n)] ∈ R^{n×k}, Q_m = diag(1 − p_y(z_i; θ_m)) (the
  "one minus correct-class probability" reweighting).

    τ(z_t)ᵢ = [ (1/M) Σ_m φ_m(z_t)ᵀ (Φ_mᵀΦ_m + λI)⁻¹ Φ_mᵀ ] · [ (1/M) Σ_m Q_m ]ᵢᵢ

(Algorithm 1 averages the two factors separately; the soft-thresholding step is left out:
scores are dense). λ = 0 uses the pseudo-inverse, which is the λ → 0 limit. λ is absolute,
or (``relative_damping``) in units of the mean diagonal of the model's own ΦᵀΦ,
‖Φ‖²_F / k, so one setting fits any model, projection and training-set size.

Checkpoint ensembling: each of a model's checkpoints (e.g. several epochs of one run) may
enter the two averages as a model of its own (``gradients.checkpointed.trak_values``), with
its own projection.

Sign: for the TRAK output f, ∇ℓ(z) = −(1 − p_y)∇f(z), so Φᵀ Q has columns −Rᵀ∇ℓ(z_i) and
τ(z_t)ᵢ = −φ(z_t)ᵀ(ΦᵀΦ)⁻¹Rᵀ∇ℓ(z_i): the influence score of ``influence.py``,
−(1/n)·∇u_tᵀH⁻¹∇ℓ(z_i), with u = f and H replaced by the projected ΦᵀΦ/n, so positive =
including z_i raises f(z_t) (helpful).

Exact identity (tested): with one model, k ≥ P (R full row rank a.s.) and λ → 0, the
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

from datamodels.gradients.grads import (
    dense_per_example_grads,
    per_example_grads,
    per_example_outputs,
)
from datamodels.gradients.model import FunctionalModel
from datamodels.gradients.projection import Projection, ProjectionKind, ProjectionPrecision
from datamodels.trainers.unit_progress import report

TrakOutput = Literal["trak", "margin"]


def example_grads(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, output: TrakOutput, chunk_size: int
) -> torch.Tensor:
    """∇_θ f(z_i) for x[B, ...]: [B, P]. Chains of dense layers (logreg, the built-in MLP)
    take one forward and one backward for the batch (``dense_per_example_grads``: on the
    digits MLP 27x faster than ``vmap(grad)`` of TRAK's output, the same numbers); other
    modules ``vmap(grad)``."""
    if model.layer_io is not None:
        return dense_per_example_grads(model, x, y, output)
    return per_example_grads(model, x, y, output, chunk_size=chunk_size)


def trak_features(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, projection: Projection,
    output: TrakOutput = "trak", chunk_size: int = 256,
) -> torch.Tensor:
    """φ(z_i) = Rᵀ ∇_θ f(z_i): float64[n, k] (``chunk_size`` per-example gradients at a
    time, each chunk projected block by block; a small R is drawn once for all chunks)."""
    blocks = projection.blocks(model.params.device) if len(x) > chunk_size else None
    chunks = []
    for s in range(0, len(x), chunk_size):
        grads = example_grads(model, x[s : s + chunk_size], y[s : s + chunk_size], output,
                              chunk_size)
        chunks.append(projection.project(grads, blocks).double())
        report(s + len(grads), len(x))
    if chunks:
        return torch.cat(chunks)
    return torch.zeros(0, projection.dim, dtype=torch.float64, device=model.params.device)


def absolute_damping(features: torch.Tensor, damping: float, relative: bool) -> float:
    """λ in absolute units: ``damping`` itself, or (``relative``) ``damping`` × the mean
    diagonal of ΦᵀΦ, ‖Φ‖²_F / k, for Φ = ``features[n, k]``."""
    if not relative:
        return float(damping)
    return float(damping) * float((features * features).sum()) / features.shape[1]


def kernel_inverse(features: torch.Tensor, damping: float) -> torch.Tensor:
    """(ΦᵀΦ + λI)⁻¹ Φᵀ for Φ = ``features[n, k]`` (pseudo-inverse at λ = 0: Φ⁺): float64[k, n],
    what `trak_attribution` and `trak_leverage` multiply by.

    Solved in the smaller of the two Gram matrices: with n < k (TRAK's usual case: 1,438
    digits and k = 2,048) (ΦᵀΦ + λI)⁻¹Φᵀ = Φᵀ(ΦΦᵀ + λI)⁻¹ (and (ΦᵀΦ)⁺Φᵀ = Φᵀ(ΦΦᵀ)⁺), an
    n × n eigenproblem instead of k × k: 3x less time on the digits MLP, the same scores."""
    n, k = features.shape
    if n < k:
        gram = features @ features.T
        return features.T @ _regularised_inverse(gram, damping)
    return _regularised_inverse(features.T @ features, damping) @ features.T


def _regularised_inverse(gram: torch.Tensor, damping: float) -> torch.Tensor:
    """(gram + λI)⁻¹, or gram⁺ at λ = 0, for a symmetric positive semi-definite gram."""
    if damping > 0:
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.inv(gram + damping * eye)
    return torch.linalg.pinv(gram, hermitian=True)


def one_minus_p(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Q's diagonal: 1 − p_y(z_i; θ): float64[n]."""
    loss = per_example_outputs(model, x, y, "loss", chunk_size=chunk_size).double()
    return 1.0 - torch.exp(-loss)


def model_projection(
    model: FunctionalModel, proj_dim: int, seed: int, kind: ProjectionKind = "gaussian",
    precision: ProjectionPrecision = "fp32",
) -> Projection:
    """The model's projection R: ``num_params`` × ``proj_dim``, seeded by ``seed``."""
    return Projection(model.num_params, proj_dim, seed, kind, precision=precision)


def trak_attribution(
    model: FunctionalModel, train_features: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, projection: Projection, *, damping: float = 0.0,
    output: TrakOutput = "trak", chunk_size: int = 256, kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """One model's φ(z_t)ᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ: float64[T, n], Φ = ``train_features`` [n, k]
    (``trak_features`` of the training set); ``kernel`` reuses ``kernel_inverse(Φ, λ)``
    ([k, n])."""
    kernel = kernel_inverse(train_features, damping) if kernel is None else kernel
    phi_target = trak_features(model, target_x, target_y, projection, output, chunk_size)
    return phi_target @ kernel


def trak_leverage(
    train_features: torch.Tensor, rows: slice | torch.Tensor, kernel: torch.Tensor
) -> torch.Tensor:
    """One model's φ(z_i)ᵀ (ΦᵀΦ + λI)⁻¹ φ(z_i) for the training points ``rows``: float64[r]
    (``kernel = kernel_inverse(Φ, λ)`` [k, n], so this is the diagonal of Φ·kernel)."""
    phi = train_features[rows]
    return (phi * kernel[:, rows].T).sum(1)


def _check(models: Sequence[FunctionalModel]) -> None:
    if not models:
        raise ValueError("models is empty: pass at least one trained FunctionalModel")


def trak_scores(
    models: Sequence[FunctionalModel], train_x: torch.Tensor, train_y: torch.Tensor,
    target_x: torch.Tensor, target_y: torch.Tensor, *, proj_dim: int, seed: int = 0,
    kind: ProjectionKind = "gaussian", damping: float = 0.0, output: TrakOutput = "trak",
    chunk_size: int = 256, precision: ProjectionPrecision = "fp32", relative_damping: bool = False,
) -> torch.Tensor:
    """τ: float64[T, n] for train_x[n, ...], train_y[n], target_x[T, ...], target_y[T],
    ensembled over ``models`` (projection seed ``seed + m`` for model m; a checkpoint
    ensemble is a longer list)."""
    _check(models)
    device = models[0].params.device
    attribution = torch.zeros(len(target_x), len(train_x), dtype=torch.float64, device=device)
    reweight = torch.zeros(len(train_x), dtype=torch.float64, device=device)
    for m, model in enumerate(models):
        projection = model_projection(model, proj_dim, seed + m, kind, precision)
        phi_train = trak_features(model, train_x, train_y, projection, output, chunk_size)
        attribution += trak_attribution(
            model, phi_train, target_x, target_y, projection,
            damping=absolute_damping(phi_train, damping, relative_damping), output=output,
            chunk_size=chunk_size,
        )
        reweight += one_minus_p(model, train_x, train_y)
    return (attribution / len(models)) * (reweight / len(models))


def trak_self_scores(
    models: Sequence[FunctionalModel], train_x: torch.Tensor, train_y: torch.Tensor, *,
    proj_dim: int, seed: int = 0, kind: ProjectionKind = "gaussian", damping: float = 0.0,
    output: TrakOutput = "trak", chunk_size: int = 256, precision: ProjectionPrecision = "fp32",
    relative_damping: bool = False,
) -> torch.Tensor:
    """τ(z_i)ᵢ: float64[n]."""
    _check(models)
    device = models[0].params.device
    leverage = torch.zeros(len(train_x), dtype=torch.float64, device=device)
    reweight = torch.zeros(len(train_x), dtype=torch.float64, device=device)
    for m, model in enumerate(models):
        projection = model_projection(model, proj_dim, seed + m, kind, precision)
        phi = trak_features(model, train_x, train_y, projection, output, chunk_size)
        kernel = kernel_inverse(phi, absolute_damping(phi, damping, relative_damping))
        leverage += trak_leverage(phi, slice(None), kernel)
        reweight += one_minus_p(model, train_x, train_y)
    return (leverage / len(models)) * (reweight / len(models))
