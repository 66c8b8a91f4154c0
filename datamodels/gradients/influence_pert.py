"""Input-perturbation influence and a training-set attack (Koh & Liang 2017, §2.2 and §5.2).

Moving training input x_z by δ changes the optimum by dθ ≈ −(1/n)·H⁻¹ ∇_x∇_θ ℓ(z)·δ, so

    I_pert,loss(z, t) = −∇L(t)ᵀ H⁻¹ ∇_x∇_θ L(z)              (Koh & Liang, per unit ε = 1/n)
    pert[t, i]        = −(1/n)·∇u_tᵀ (H + λI)⁻¹ ∇_x∇_θ ℓ(z_i) ≈ ∂u_t(θ̂(x_i)) / ∂x_i

``pert`` is, to first order, the gradient of the retrained target utility u_t (margin, or
−loss, as in ``influence.py``) with respect to training input x_i, with the project's sign:
a step +δ·pert raises u_t. It is computed as −(1/n)·∇_x (s_tᵀ ∇_θ ℓ(x_i, y_i)) with
s_t = (H + λI)⁻¹∇u_t, by ``jacrev`` over x inside a ``vmap`` over the training points.

``craft_attack`` (Koh & Liang §5.2): to flip the target's prediction, lower its margin by
iterated signed steps on one training input inside an L∞ ball,
δ ← clip(δ − step·sign(pert[t, z]), −budget, budget), re-fitting the model on the perturbed
data after each step (``refit``) and recomputing ``pert`` there, until the retrained margin
is negative or ``max_iter`` steps are taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.func import grad, jacrev, vmap

from datamodels.gradients.grads import per_example_outputs
from datamodels.gradients.ihvp import Exact, Solver
from datamodels.gradients.influence import Utility, target_directions
from datamodels.gradients.model import FunctionalModel, example_loss
from datamodels.trainers.unit_progress import report

# The code version of the training-set attack (``attack.influence_pert``, recorded by the
# ``attack`` stages): `craft_attack`, `most_influential_point`; bump with any change that can move
# a number it computes for the same inputs.
ATTACK_VERSION = 1


def influence_pert_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, utility: Utility = "margin", solver: Solver = Exact(),
    points: torch.Tensor | None = None, points_x: torch.Tensor | None = None,
    points_y: torch.Tensor | None = None, hessian: torch.Tensor | None = None,
    chunk_elements: int = 1 << 24,
) -> torch.Tensor:
    """pert: float64[T, m, *x.shape[1:]] for the training points ``points`` (int64[m]; all n
    when None), or for the inputs ``points_x``/``points_y`` (e.g. points outside the
    model's training set). The derivative is taken in float64. ``hessian``: ``Exact`` only.

    Reverse mode over the T projected outputs per point (measured faster than forward mode
    over the input coordinates even when d < T), ``chunk_elements`` / (T·P) points at a
    time, which bounds the intermediate memory."""
    n = len(train_x)
    directions = target_directions(
        model, train_x, train_y, target_x, target_y, utility, solver, hessian=hessian
    )
    if points_x is None:
        index = torch.arange(n) if points is None else torch.as_tensor(points)
        points_x, points_y = train_x[index], train_y[index]
    loss_grad = grad(lambda p, x, y: example_loss(model, p, x, y))

    points_x = points_x.double()
    T, P = len(directions), model.num_params
    projected = vmap(jacrev(lambda x, y: directions @ loss_grad(model.params, x, y)))  # [m, T, *x]
    step = max(1, chunk_elements // max(1, T * P))
    parts = []
    for s in range(0, len(points_x), step):
        parts.append(projected(points_x[s : s + step], points_y[s : s + step]).movedim(1, 0))
        report(min(len(points_x), s + step), len(points_x))  # the bar moves per chunk
    out = torch.cat(parts, dim=1)
    return -out.reshape(T, len(points_x), *points_x.shape[1:]) / n


@dataclass
class AttackResult:
    """``perturbed_x``: the attacked training input (x.shape[1:]); ``delta`` = perturbed − original
    (||delta||_∞ <= budget); ``margins``: the target's margin after each re-fit, starting
    with the clean model's; ``flipped``: the last margin is < 0."""

    point: int
    perturbed_x: torch.Tensor
    delta: torch.Tensor
    margins: list[float] = field(default_factory=list)
    flipped: bool = False
    model: FunctionalModel | None = None


def most_influential_point(pert: torch.Tensor) -> int:
    """Index of the training point whose L∞-budget signed step moves the target most:
    argmax_i ||pert[i]||₁ for pert[m, *x] of one target."""
    return int(pert.reshape(len(pert), -1).abs().sum(1).argmax())


def craft_attack(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, target_x: torch.Tensor,
    target_y: torch.Tensor, *, point: int, budget: float,
    refit: Callable[[torch.Tensor], FunctionalModel], step: float | None = None, max_iter: int = 20,
    solver: Solver = Exact(),
) -> AttackResult:
    """Perturb training input ``point`` within ||δ||_∞ <= ``budget`` until the re-fitted model
    misclassifies the one target ``target_x[...]`` (no batch axis), ``target_y[]``.

    ``refit(train_x[n, ...]) -> FunctionalModel`` retrains on the perturbed data (for
    ``logreg``: ``fit_logreg`` + ``logreg_model``); ``step`` defaults to budget / 4."""
    if budget <= 0:
        raise ValueError(f"budget must be > 0; got {budget}")
    step = budget / 4 if step is None else step
    x = train_x.double().clone()
    original = x[point].clone()
    tx, ty = target_x.double().unsqueeze(0), target_y.reshape(1)
    current = model
    result = AttackResult(point, original.clone(), torch.zeros_like(original))
    result.margins.append(float(per_example_outputs(current, tx, ty, "margin")[0]))
    for _ in range(max_iter):
        if result.margins[-1] < 0:
            break
        pert = influence_pert_scores(current, x, train_y, tx, ty, utility="margin", solver=solver,
                                     points=torch.tensor([point]))[0, 0]
        delta = (x[point] - original - step * torch.sign(pert)).clamp(-budget, budget)
        x[point] = original + delta
        current = refit(x)
        result.margins.append(float(per_example_outputs(current, tx, ty, "margin")[0]))
    result.perturbed_x = x[point].clone()
    result.delta = result.perturbed_x - original
    result.flipped = result.margins[-1] < 0
    result.model = current
    return result


def influence_pert_self_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, points_x: torch.Tensor,
    points_y: torch.Tensor, *, utility: Utility = "loss", solver: Solver = Exact(),
    hessian: torch.Tensor | None = None,
) -> torch.Tensor:
    """self[i] = −(1/n)·∇_x (s_iᵀ ∇_θ ℓ(x_i, y_i)) with s_i = (H + λI)⁻¹∇u(z_i) held at the
    unperturbed point: how point i's own retrained utility moves with its input, through the
    model only: float64[m, *x.shape[1:]]. One double-backward per point (not m² as the
    diagonal of ``influence_pert_scores`` would take)."""
    n = len(train_x)
    directions = target_directions(
        model, train_x, train_y, points_x, points_y, utility, solver, hessian=hessian
    )
    loss_grad = grad(lambda p, x, y: example_loss(model, p, x, y))
    along = grad(lambda x, y, s: s @ loss_grad(model.params, x, y))
    return -vmap(along)(points_x.double(), points_y, directions) / n
