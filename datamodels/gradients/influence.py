"""Influence functions (Koh & Liang 2017) in the project's sign convention.

Koh & Liang: up-weighting z by ε moves the optimum by dθ/dε = −H⁻¹∇ℓ̃(z), so a target
function u_t changes by I_up,u(z, t) = du_t/dε = −∇u_tᵀ H⁻¹ ∇ℓ̃(z); with u_t = L(t) this is
I_up,loss = −∇L(t)ᵀ H⁻¹ ∇L(z). H = ∇²J(θ̂), J the trainer's mean objective (``model.py``).

Removing z from n training points is ε = −1/n, so to first order

    u_t(with z) − u_t(without z) ≈ (1/n)·I_up,u(z, t) = −(1/n)·∇u_tᵀ (H + λI)⁻¹ ∇ℓ̃(z)

which is our score (positive = including z raises u_t = helpful). The utility u_t is

* ``"margin"``: u_t = m_t, the target's margin (correct logit − largest other), so the
  score predicts the LOO change of exactly what ``train_batch`` records; or
* ``"loss"``:   u_t = −L(t), so score = +(1/n)·∇L(t)ᵀ H⁻¹ ∇ℓ̃(z) = −(1/n)·I_up,loss
  (Koh & Liang 2017), which predicts L_t(without z) − L_t(with z).

∇ℓ̃(z) (``train_output``) is ``"term"`` = ∇(ℓ(z) + R) by default: the example's whole term
of J, for which dropping z and re-solving the 1/(n−1)-mean is *exactly* the ε = −1/n
perturbation (``model.py``). ``"loss"`` = ∇ℓ(z) is Koh & Liang's literal form; the two
differ by the target-constant (1/n)·∇u_tᵀH⁻¹∇R. λ is the damping.

Self scores (t = z, a training point on itself) rank points for mislabel detection:
self[i] = −(1/n)·∇u_{z_i}ᵀ (H + λI)⁻¹ ∇ℓ̃(z_i); with ``"loss"`` it is (1/n)·∇ℓᵀH⁻¹∇ℓ̃ ≥ 0
for convex models.
"""

from __future__ import annotations

from typing import Literal

import torch

from datamodels.gradients.grads import exact_hessian, per_example_grads
from datamodels.gradients.ihvp import Exact, FactoredHessian, Solver, inverse_hvp
from datamodels.gradients.model import FunctionalModel
from datamodels.trainers.unit_progress import report, within

Utility = Literal["margin", "loss"]
TrainOutput = Literal["term", "loss"]


def utility_grads(
    model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, utility: Utility = "margin",
    chunk_size: int = 256,
) -> torch.Tensor:
    """∇_θ u(z) for x[T, ...], y[T]: [T, P] (the params' dtype); u = margin, or −loss."""
    if utility == "margin":
        return per_example_grads(model, x, y, "margin", chunk_size=chunk_size)
    if utility == "loss":
        return -per_example_grads(model, x, y, "loss", chunk_size=chunk_size)
    raise ValueError(f"utility must be 'margin' or 'loss'; got {utility!r}")


def target_directions(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, utility: Utility = "margin", solver: Solver = Exact(),
    chunk_size: int = 256, hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """s_t = (H + λI)⁺ ∇u_t: [T, P] (the per-target inverse-HVP every score reuses)."""
    grads = utility_grads(model, target_x, target_y, utility, chunk_size)
    return inverse_hvp(model, train_x, train_y, grads, solver, hessian=hessian)


def influence_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, utility: Utility = "margin", solver: Solver = Exact(),
    train_output: TrainOutput = "term", chunk_size: int = 256, points_x: torch.Tensor | None = None,
    points_y: torch.Tensor | None = None, hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """score[t, i] = −(1/n)·∇u_tᵀ (H + λI)⁻¹ ∇ℓ̃(z_i) ≈ u_t(with z_i) − u_t(without z_i).

    train_x[n, ...], train_y[n] (the model's whole training set, which defines H and n);
    target_x[T, ...], target_y[T] -> float64[T, m] for the m points ``points_x``/``points_y``
    (default: the training set; points outside it get the effect of adding them, weight 1/n).
    ``hessian`` (``Exact`` only) reuses a precomputed H."""
    n = len(train_x)
    points_x, points_y = (train_x, train_y) if points_x is None else (points_x, points_y)
    with within(0.0, 0.5):  # the solves (CG or LiSSA iterations), then the training side
        directions = target_directions(
            model, train_x, train_y, target_x, target_y, utility, solver, chunk_size, hessian
        )
    scores = torch.empty(
        len(target_x), len(points_x), dtype=torch.float64, device=model.params.device
    )
    for start in range(0, len(points_x), chunk_size):
        stop = min(len(points_x), start + chunk_size)
        grads = per_example_grads(
            model, points_x[start:stop], points_y[start:stop], train_output, chunk_size=chunk_size
        )
        scores[:, start:stop] = -(directions @ grads.T) / n
        report(0.5 * len(points_x) + 0.5 * stop, len(points_x))
    return scores


def influence_self_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, *,
    utility: Utility = "loss", solver: Solver = Exact(), train_output: TrainOutput = "term",
    chunk_size: int = 256, points_x: torch.Tensor | None = None,
    points_y: torch.Tensor | None = None, hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """self[i] = −(1/n)·∇u_{z_i}ᵀ (H + λI)⁻¹ ∇ℓ̃(z_i): float64[m] for the points ``points_x``
    (default: the training set), one solve per point, ``chunk_size`` right-hand sides at a
    time; ``Exact`` forms H once (or takes ``hessian``)."""
    n = len(train_x)
    points_x, points_y = (train_x, train_y) if points_x is None else (points_x, points_y)
    # factor once for every chunk
    if isinstance(solver, Exact) and not isinstance(hessian, FactoredHessian):
        H = exact_hessian(model, train_x, train_y) if hessian is None else hessian
        hessian = FactoredHessian.of(H, solver.damping, model.null_directions)
    out = torch.empty(len(points_x), dtype=torch.float64, device=model.params.device)
    for start in range(0, len(points_x), chunk_size):
        sl = slice(start, min(len(points_x), start + chunk_size))
        with within(start / len(points_x), sl.stop / len(points_x)):
            s = target_directions(
                model, train_x, train_y, points_x[sl], points_y[sl], utility, solver,
                chunk_size, hessian,
            )
        g = per_example_grads(
            model, points_x[sl], points_y[sl], train_output, chunk_size=chunk_size
        )
        out[sl] = -(s * g).sum(1) / n
    return out
