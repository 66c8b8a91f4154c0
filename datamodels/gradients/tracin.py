"""TracIn-CP (Pruthi et al. 2020): gradient similarity summed over saved checkpoints.

    TracInCP(z, t) = Σ_k η_k · ∇ℓ(z; θ_k) · ∇ℓ(t; θ_k)

over checkpoints (θ_k, η_k) (parameters and the learning rate in force after them). One SGD
step on z at θ_k changes ℓ(t) by −η_k ∇ℓ(t)·∇ℓ(z) to first order, so a positive value is a
*proponent* (z lowers t's loss = helpful), matching the project's sign convention. With
``utility="margin"`` the target side is the margin m_t instead: score = Σ_k η_k ∇m_t·(−∇ℓ(z)),
the first-order change of t's margin caused by the steps on z. In general
score(z, t) = −Σ_k η_k ∇u_t(θ_k)·∇ℓ(z; θ_k) with u_t = −ℓ(t) or m_t.

Self scores (mislabel detection): Σ_k η_k ||∇ℓ(z; θ_k)||².

For models made of dense layers (``logreg``, ``mlp``: ``FunctionalModel.layer_io``) the dot
products come from per-layer factors, ∇_{W,b} f(z) = [a; 1] ⊗ δ, so
∇f(z)·∇g(zʹ) = Σ_l ([a; 1]·[aʹ; 1])(δ·δʹ): one forward and backward per batch and no
per-example gradient is ever formed; other models take ``vmap(grad)`` per-example gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from datamodels.gradients.grads import (
    factor_dots,
    factor_norms,
    gradient_factors,
    per_example_grads,
)
from datamodels.gradients.influence import Utility, utility_grads
from datamodels.gradients.model import FunctionalModel
from datamodels.trainers.unit_progress import report

Checkpoint = tuple[torch.Tensor, float]  # (params float[P], learning rate η_k)


def tracin_scores(
    model: FunctionalModel, checkpoints: Sequence[Checkpoint], train_x: torch.Tensor,
    train_y: torch.Tensor, target_x: torch.Tensor, target_y: torch.Tensor, *,
    utility: Utility = "loss", chunk_size: int = 256,
) -> torch.Tensor:
    """train_x[n, ...], train_y[n], target_x[T, ...], target_y[T] -> float64[T, n].
    ``model`` supplies the architecture; its own params are ignored in favour of each
    checkpoint's."""
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass at least one (params, learning_rate) pair")
    n = len(train_x)
    scores = torch.zeros(len(target_x), n, dtype=torch.float64, device=model.params.device)
    for k, (params, lr) in enumerate(checkpoints):
        at = model.with_params(params.detach().to(model.params).reshape(-1))
        if at.layer_io is not None:  # dense layers: dot products from per-layer factors
            if utility not in ("loss", "margin"):
                raise ValueError(f"utility must be 'margin' or 'loss'; got {utility!r}")
            sign = -1.0 if utility == "loss" else 1.0  # ∇u_t = −∇ℓ_t or ∇m_t
            target_side = gradient_factors(at, target_x, target_y, utility)
            for start in range(0, n, chunk_size):
                stop = min(n, start + chunk_size)
                train_side = gradient_factors(at, train_x[start:stop], train_y[start:stop], "loss")
                scores[:, start:stop] -= lr * sign * factor_dots(target_side, train_side)
                report(k * n + stop, len(checkpoints) * n)
            continue
        target_side = utility_grads(at, target_x, target_y, utility, chunk_size)
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            grads = per_example_grads(
                at, train_x[start:stop], train_y[start:stop], "loss", chunk_size=chunk_size
            )
            scores[:, start:stop] -= lr * (target_side @ grads.T)
            report(k * n + stop, len(checkpoints) * n)
    return scores


def tracin_self_scores(
    model: FunctionalModel, checkpoints: Sequence[Checkpoint], train_x: torch.Tensor,
    train_y: torch.Tensor, chunk_size: int = 256,
) -> torch.Tensor:
    """Σ_k η_k ||∇ℓ(z_i; θ_k)||²: float64[n]."""
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass at least one (params, learning_rate) pair")
    out = torch.zeros(len(train_x), dtype=torch.float64, device=model.params.device)
    n = len(train_x)
    for k, (params, lr) in enumerate(checkpoints):
        at = model.with_params(params.detach().to(model.params).reshape(-1))
        for start in range(0, len(train_x), chunk_size):
            sl = slice(start, min(len(train_x), start + chunk_size))
            report(k * n + start, len(checkpoints) * n)
            if at.layer_io is not None:
                out[sl] += lr * factor_norms(gradient_factors(at, train_x[sl], train_y[sl], "loss"))
                continue
            grads = per_example_grads(at, train_x[sl], train_y[sl], "loss", chunk_size=chunk_size)
            out[sl] += lr * grads.pow(2).sum(1)
    return out
