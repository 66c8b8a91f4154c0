"""Metagradients: the exact derivative of a trained model's outputs with respect to the
per-example loss weights of its whole training run (Ilyas & Engstrom 2025, "MAGIC").

**MLP** (the batched trainer's recipe, ``train.batched.train_mlp_batched``, one model).
With w ∈ R^n the example weights (w = 1 on the model's mask: the trained model), batches
β_s drawn by ``EpochOrders`` from the mask (c_s = |β_s| real examples), lr η_s of the
schedule, momentum μ, weight decay λ, ℓ_i the (label-smoothed) cross-entropy:

    θ_0 = init(seed),  v_0 = 0
    g_s = ∇_θ Σ_{i∈β_s} w_i ℓ_i(θ_s) / c_s
    v_{s+1} = μ v_s + g_s + λ θ_s,     θ_{s+1} = θ_s − η_s v_{s+1}

    score[t, i] = ∂ m_t(θ_S) / ∂ w_i,   m_t the target's margin (what the trainer records).

Positive = raising the weight of (including) example i raises the target's margin: helpful,
DESIGN §3. Reverse mode (``metagradient_scores``), adjoints θ̄ (of θ_{s+1}) and v̄ (of
v_{s+1}), one row per target, starting from θ̄ = ∇m_t(θ_S), v̄ = 0; for s = S−1 … 0:

    u = v̄ − η_s θ̄                     (the whole adjoint of v_{s+1})
    w̄_i += ∇ℓ_i(θ_s)·u / c_s           (i ∈ β_s; ∂g_s/∂w_i = ∇ℓ_i/c_s)
    θ̄ ← θ̄ + λ u + H_s u,   v̄ ← μ u     (H_s = ∇_θ g_s at the trained w)

The iterates θ_0 … θ_{S−1} of the replayed run (``replay_mlp``: same seed, orders and lr as
the trainer, float64) are kept: S·P numbers (digits MLP, 20 epochs × 23 steps × 4,810
parameters: 18 MB). A step costs one forward-over-reverse pass (``torch.func.jvp`` of the
batch gradient) vmapped over the block's targets, which gives H_s u and every ∇ℓ_i·u at once.
Points the model never sees (outside its mask) get 0: they are in no batch.

**logreg** (trained to convergence): implicit differentiation of the optimum of
J_w = Σ_{i∈S} w_i ℓ_i / |S| + R gives ∂θ̂/∂w_i = −H⁻¹∇ℓ_i / |S|, so

    score[t, i] = −(1/|S|)·∇m_tᵀ H⁻¹ ∇ℓ_i

the influence function with the loss (not the whole term) of i and no damping
(``influence.influence_scores(train_output="loss", solver=Exact(0))``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from datamodels.config import ModelConfig, TrainConfig
from datamodels.gradients.grads import per_example_grads
from datamodels.gradients.ihvp import Exact
from datamodels.gradients.influence import influence_scores
from datamodels.gradients.model import FunctionalModel, mlp_model
from datamodels.models.mlp import init_params, layer_sizes
from datamodels.train.orders import EpochOrders, lr_factors


@dataclass
class Trajectory:
    """A replayed training run: ``iterates`` float64[S, P] (θ_s before step s), ``final``
    float64[P] (θ_S), per step the train positions ``batches[s]`` int64[c_s] and ``lrs[s]``
    η_s; ``model`` the trained model as a ``FunctionalModel`` (params θ_S)."""

    iterates: torch.Tensor
    final: torch.Tensor
    batches: list[torch.Tensor]
    lrs: list[float]
    model: FunctionalModel
    momentum: float
    weight_decay: float
    label_smoothing: float


def training_steps(
    mask: np.ndarray, seed: int, recipe: TrainConfig
) -> list[tuple[np.ndarray, float]]:
    """[(train positions int64[c_s], η_s)] of every step of one model, as the batched trainer
    takes them: ``EpochOrders`` over ``mask`` bool[n_train] with the model's ``seed``."""
    orders = EpochOrders(mask[None, :], np.array([seed]), recipe.batch_size)
    per_epoch = int(orders.steps_per_epoch[0])
    total = per_epoch * recipe.epochs
    B = recipe.batch_size
    steps = []
    for epoch in range(recipe.epochs):
        index, valid = orders.next_epoch()
        for step in range(per_epoch):
            cols = slice(step * B, (step + 1) * B)
            positions = index[0, cols][valid[0, cols]]
            factor = lr_factors(
                recipe.schedule, np.array([epoch * per_epoch + step]), np.array([total])
            )
            steps.append((positions, float(recipe.lr * factor[0])))
    return steps


def _batch_losses(model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, smoothing: float):
    def losses(p: torch.Tensor) -> torch.Tensor:
        logits = model.logits_fn(p, x)
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)

    return losses


@torch.no_grad()
def replay_mlp(
    train_x: torch.Tensor, train_y: torch.Tensor, mask: np.ndarray, seed: int,
    model: ModelConfig, recipe: TrainConfig, num_classes: int,
    weights: np.ndarray | None = None,
) -> Trajectory:
    """Train one MLP as ``train_mlp_batched`` does (same init, orders, lr, momentum, weight
    decay, label smoothing) in float64, keeping every iterate. ``weights`` float[n_train]
    (default 1): the example weights w of the loss; batches still come from ``mask``."""
    device = train_x.device
    x = train_x.reshape(len(train_x), -1).double()
    sizes = layer_sizes(x.shape[1], model.hidden, model.depth, num_classes)
    layers = [p.to(device, torch.float64) for p in init_params(int(seed), sizes)]
    functional = mlp_model(layers, recipe.weight_decay, recipe.label_smoothing)
    theta = functional.params.clone()
    w = torch.ones(len(x), dtype=torch.float64, device=device)
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, np.float64), device=device)
    velocity = torch.zeros_like(theta)
    steps = training_steps(np.asarray(mask, bool), seed, recipe)
    iterates = torch.empty(len(steps), len(theta), dtype=torch.float64, device=device)
    batches, lrs = [], []
    for s, (positions, lr) in enumerate(steps):
        batch = torch.from_numpy(positions).to(device)
        iterates[s] = theta
        coef = w[batch] / len(batch)
        losses = _batch_losses(functional, x[batch], train_y[batch], recipe.label_smoothing)
        with torch.enable_grad():
            g = grad(lambda p, losses=losses, coef=coef: (coef * losses(p)).sum())(theta)
        velocity.mul_(recipe.momentum).add_(g).add_(theta, alpha=recipe.weight_decay)
        theta = theta - lr * velocity
        batches.append(batch)
        lrs.append(lr)
    return Trajectory(
        iterates, theta, batches, lrs, functional.with_params(theta), recipe.momentum,
        recipe.weight_decay, recipe.label_smoothing,
    )


def metagradient_scores(
    trajectory: Trajectory, train_x: torch.Tensor, train_y: torch.Tensor,
    target_x: torch.Tensor, target_y: torch.Tensor, weights: np.ndarray | None = None,
    hessian: bool = True,
) -> torch.Tensor:
    """score[t, i] = ∂m_t(θ_S)/∂w_i: float64[T, n_train] for targets ``target_x[T, ...]``,
    ``target_y[T]``, by reverse mode through every step of ``trajectory`` (module docstring).
    ``weights`` float[n_train]: the point w the run was replayed at (default 1).
    ``hessian=False`` drops the H_s u terms (HyDRA's approximation, ``gradients.hydra``)."""
    model = trajectory.model
    x = train_x.reshape(len(train_x), -1).double()
    device = x.device
    n = len(x)
    w = torch.ones(n, dtype=torch.float64, device=device)
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, np.float64), device=device)
    theta_bar = per_example_grads(model, target_x, target_y, "margin", params=trajectory.final)
    theta_bar = theta_bar.double()
    v_bar = torch.zeros_like(theta_bar)
    scores = torch.zeros(len(theta_bar), n, dtype=torch.float64, device=device)
    mu, lam = trajectory.momentum, trajectory.weight_decay
    for s in reversed(range(len(trajectory.batches))):
        batch = trajectory.batches[s]
        u = v_bar - trajectory.lrs[s] * theta_bar
        coef = 1.0 / len(batch)
        hvp, loss_grads = _step_products(
            model, trajectory.iterates[s], x[batch], train_y[batch], w[batch] * coef,
            trajectory.label_smoothing, u if hessian else None,
        )
        scores[:, batch] += (u @ loss_grads.T) * coef
        theta_bar = theta_bar + lam * u + (hvp if hessian else 0.0)
        v_bar = mu * u
    return scores


def _step_products(
    model: FunctionalModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
    coef: torch.Tensor, smoothing: float, directions: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """At θ = ``theta`` float64[P], for one batch x[c, d], y[c] with loss Σ coef_i ℓ_i:
    (H u for every row u of ``directions`` [T, P], per-example ∇ℓ_i [c, P]). H u by one
    batched double-backward (``is_grads_batched``: about 20x faster than vmapping a
    ``torch.func.jvp`` over the targets on CPU, measured)."""
    losses = _batch_losses(model, x, y, smoothing)
    hvp = None
    if directions is not None:
        with torch.enable_grad():
            p = theta.detach().requires_grad_(True)
            g = torch.autograd.grad((coef * losses(p)).sum(), p, create_graph=True)[0]
            hvp = torch.autograd.grad(g, p, grad_outputs=directions, is_grads_batched=True)[0]
        hvp = hvp.detach()

    def one_loss(q: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return _batch_losses(model, xi[None], yi[None], smoothing)(q)[0]

    return hvp, vmap(grad(one_loss), in_dims=(None, 0, 0))(theta, x, y)


def metagradient_self_scores(
    trajectory: Trajectory, train_x: torch.Tensor, train_y: torch.Tensor,
    positions: np.ndarray, weights: np.ndarray | None = None,
) -> torch.Tensor:
    """self[k] = ∂m_{z_i}(θ_S)/∂w_i for i = positions[k]: float64[k], the metagradient of a
    training point's own margin with respect to its own weight (mislabel detection)."""
    index = torch.as_tensor(np.asarray(positions, np.int64), device=train_x.device)
    table = metagradient_scores(
        trajectory, train_x, train_y, train_x[index], train_y[index], weights
    )
    return table[torch.arange(len(index), device=table.device), index]


def logreg_metagradient_scores(
    model: FunctionalModel, train_x: torch.Tensor, train_y: torch.Tensor, mask: np.ndarray,
    target_x: torch.Tensor, target_y: torch.Tensor, hessian=None,
) -> torch.Tensor:
    """score[t, i] = −(1/|S|)·∇m_tᵀ H⁻¹ ∇ℓ_i: float64[T, n_train], the metagradient of a
    converged ``logreg`` (``model``, trained on ``mask`` bool[n_train]) by implicit
    differentiation; every training point is scored (outside S: the effect of adding it)."""
    subset = torch.as_tensor(np.asarray(mask, bool), device=train_x.device)
    return influence_scores(
        model, train_x[subset], train_y[subset], target_x, target_y, utility="margin",
        solver=Exact(0.0), train_output="loss", points_x=train_x, points_y=train_y,
        hessian=hessian,
    )
