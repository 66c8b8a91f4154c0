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

Positive = raising the weight of (including) example i raises the target's margin: helpful
(the package's sign convention). Reverse mode (``metagradient_scores``), adjoints θ̄ (of
θ_{s+1}) and v̄ (of v_{s+1}), one row per target, starting from θ̄ = ∇m_t(θ_S), v̄ = 0;
for s = S−1 … 0:

    u = v̄ − η_s θ̄                     (the whole adjoint of v_{s+1})
    w̄_i += ∇ℓ_i(θ_s)·u / c_s           (i ∈ β_s; ∂g_s/∂w_i = ∇ℓ_i/c_s)
    θ̄ ← θ̄ + λ u + H_s u,   v̄ ← μ u     (H_s = ∇_θ g_s at the trained w)

The iterates θ_0 … θ_{S−1} of the replayed run (``replay_mlp``: same seed, orders and lr as
the trainer, float64) are kept: S·P numbers (digits MLP, 10 epochs × 23 steps × 4,810
parameters: 8.9 MB), or, past a memory bound, (θ_s, v_s) every k steps with each segment
recomputed by the same step function when the adjoint reaches it (``checkpoint_interval``:
the same numbers bit for bit in (2⌈S/k⌉ + k)·P·8 bytes, O(√S·P) at the least). A step of
the adjoint carries the block's T targets at once: H_s u and every ∇ℓ_i·u come from the
MLP's forward-over-reverse pass written as matrix products with the targets folded into
the columns (``mlp_adjoint.step_products``), about 3x faster on CPU than the batched
autograd double backward kept as the reference (``products="autograd"``).
Points the model never sees (outside its mask) get 0: they are in no batch.

**logreg** (trained to convergence): implicit differentiation of the optimum of
J_w = Σ_{i∈S} w_i ℓ_i / |S| + R gives ∂θ̂/∂w_i = −H⁻¹∇ℓ_i / |S|, so

    score[t, i] = −(1/|S|)·∇m_tᵀ H⁻¹ ∇ℓ_i

the influence function with the loss (not the whole term) of i and no damping
(``influence.influence_scores(train_output="loss", solver=Exact(0))``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from datamodels.config import ModelConfig, TrainConfig
from datamodels.gradients.grads import per_example_grads
from datamodels.gradients.ihvp import Exact
from datamodels.gradients.influence import influence_scores
from datamodels.gradients.mlp_adjoint import batch_gradient, layer_major, step_products
from datamodels.gradients.model import FunctionalModel, mlp_model
from datamodels.models.activations import RELU, Activation, activation_for
from datamodels.models.mlp import init_params, layer_sizes
from datamodels.trainers.orders import EpochOrders, lr_factors


@dataclass
class Trajectory:
    """A replayed training run: per step the train positions ``batches[s]`` int64[c_s] and
    ``lrs[s]`` η_s; ``final`` float64[P] (θ_S); ``model`` the trained model as a
    ``FunctionalModel`` (params θ_S); ``sizes`` the MLP's layer widths.

    The iterates θ_0 … θ_{S−1} are kept whole (``every = 1``: ``iterates`` float64[S, P]) or
    checkpointed (``every = k > 1``: ``saved`` float64[⌈S/k⌉, 2, P] holds (θ_s, v_s) at
    s = 0, k, 2k, …; ``iterates`` is None) and a segment is recomputed from its checkpoint
    when the adjoint reaches it (``segment``), by the same step function as the replay, so
    the recomputed iterates are bit for bit those of a run that kept them."""

    iterates: torch.Tensor | None
    final: torch.Tensor
    batches: list[torch.Tensor]
    lrs: list[float]
    model: FunctionalModel
    momentum: float
    weight_decay: float
    label_smoothing: float
    sizes: list[int] = field(default_factory=list)
    every: int = 1
    saved: torch.Tensor | None = None
    x: torch.Tensor | None = None  # float64[n, d], the replay's inputs (for recomputation)
    y: torch.Tensor | None = None
    w: torch.Tensor | None = None  # float64[n], the example weights replayed at
    activation: Activation = RELU  # the hidden layers' φ (``model.activation``)

    @property
    def steps(self) -> int:
        return len(self.batches)

    @property
    def stored_bytes(self) -> int:
        """Bytes the kept iterates take: S·P·8, or the checkpoints plus one segment."""
        P = len(self.final)
        if self.every == 1:
            return self.steps * P * 8
        return (len(self.saved) * 2 + self.every) * P * 8

    def segments(self) -> list[tuple[int, int]]:
        """[(start, stop)] of the steps, ``every`` at a time, first to last."""
        return [(a, min(a + self.every, self.steps)) for a in range(0, self.steps, self.every)]

    def segment(self, start: int, stop: int) -> torch.Tensor:
        """float64[stop − start, P]: θ_start … θ_{stop−1} (kept, or recomputed from the
        checkpoint at ``start``, a multiple of ``every``)."""
        if self.every == 1:
            return self.iterates[start:stop]
        theta, velocity = self.saved[start // self.every].clone()
        out = torch.empty(stop - start, len(theta), dtype=theta.dtype, device=theta.device)
        for s in range(start, stop):
            out[s - start] = theta
            theta = _sgd_step(self, theta, velocity, s)
        return out


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


def checkpoint_interval(steps: int, params: int, memory_bytes: float | None) -> int:
    """k, the steps between checkpoints: 1 (keep every iterate) when S·P·8 bytes fit in
    ``memory_bytes`` (None: no bound), else the smallest k whose checkpoints (θ and v every k
    steps) plus one recomputed segment, (2⌈S/k⌉ + k)·P·8 bytes, fit; when none does, the k
    that needs least (about √(2S): memory O(√S·P))."""
    if memory_bytes is None or steps * params * 8 <= memory_bytes:
        return 1
    need = {k: (2 * -(-steps // k) + k) * params * 8 for k in range(2, max(steps, 2) + 1)}
    fitting = [k for k, bytes_ in need.items() if bytes_ <= memory_bytes]
    return min(fitting) if fitting else min(need, key=need.get)


def _batch_losses(model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, smoothing: float):
    def losses(p: torch.Tensor) -> torch.Tensor:
        logits = model.logits_fn(p, x)
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)

    return losses


def _sgd_step(run: Trajectory, theta: torch.Tensor, velocity: torch.Tensor, s: int):
    """θ_{s+1} from θ_s (``velocity`` v_s → v_{s+1} in place): the replay's one step."""
    batch = run.batches[s]
    g = batch_gradient(
        run.sizes, theta, run.x[batch], run.y[batch], run.w[batch] / len(batch),
        run.label_smoothing, run.activation,
    )
    velocity.mul_(run.momentum).add_(g).add_(theta, alpha=run.weight_decay)
    return theta - run.lrs[s] * velocity


@torch.no_grad()
def replay_mlp(
    train_x: torch.Tensor, train_y: torch.Tensor, mask: np.ndarray, seed: int,
    model: ModelConfig, recipe: TrainConfig, num_classes: int,
    weights: np.ndarray | None = None, memory_bytes: float | None = None,
) -> Trajectory:
    """Train one MLP as ``train_mlp_batched`` does (same init, activation, orders, lr,
    momentum, weight decay, label smoothing) in float64, keeping its iterates. ``weights``
    float[n_train] (default 1): the example weights w of the loss; batches still come from
    ``mask``.
    ``memory_bytes``: bound on the kept iterates (``checkpoint_interval``; None keeps all)."""
    device = train_x.device
    x = train_x.reshape(len(train_x), -1).double()
    sizes = layer_sizes(x.shape[1], model.hidden, model.depth, num_classes)
    layers = [p.to(device, torch.float64) for p in init_params(int(seed), sizes)]
    activation = activation_for(model)
    functional = mlp_model(layers, recipe.weight_decay, recipe.label_smoothing, activation)
    theta = functional.params.clone()
    w = torch.ones(len(x), dtype=torch.float64, device=device)
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, np.float64), device=device)
    steps = training_steps(np.asarray(mask, bool), seed, recipe)
    every = checkpoint_interval(len(steps), len(theta), memory_bytes)
    run = Trajectory(
        None, theta, [torch.from_numpy(p).to(device) for p, _ in steps],
        [lr for _, lr in steps], functional, recipe.momentum, recipe.weight_decay,
        recipe.label_smoothing, sizes, every, None, x, train_y.to(device), w, activation,
    )
    P = len(theta)
    if every == 1:
        run.iterates = torch.empty(len(steps), P, dtype=torch.float64, device=device)
    else:
        run.saved = torch.empty(-(-len(steps) // every), 2, P, dtype=torch.float64, device=device)
    velocity = torch.zeros_like(theta)
    for s in range(len(steps)):
        if every == 1:
            run.iterates[s] = theta
        elif s % every == 0:
            run.saved[s // every, 0] = theta
            run.saved[s // every, 1] = velocity
        theta = _sgd_step(run, theta, velocity, s)
    run.final = theta
    run.model = functional.with_params(theta)
    return run


def metagradient_scores(
    trajectory: Trajectory, train_x: torch.Tensor, train_y: torch.Tensor,
    target_x: torch.Tensor, target_y: torch.Tensor, weights: np.ndarray | None = None,
    hessian: bool = True, products: str = "matmul", dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """score[t, i] = ∂m_t(θ_S)/∂w_i: float64[T, n_train] for targets ``target_x[T, ...]``,
    ``target_y[T]``, by reverse mode through every step of ``trajectory`` (module docstring).
    ``weights`` float[n_train]: the point w the run was replayed at (default 1).
    ``hessian=False`` drops the H_s u terms (HyDRA's approximation, ``gradients.hydra``).
    ``products``: how a step's H_s u and ∇ℓ_i·u are formed for the block's T targets at once:
    ``matmul`` (the MLP's forward-over-reverse pass written as batched matmuls, default) or
    ``autograd`` (a batched double backward plus vmapped per-example gradients: the
    reference, several times slower). ``dtype``: of the adjoint's arithmetic (the replay
    stays float64); float32 halves its cost (``benchmarks/metagradient.py`` measures what it
    changes)."""
    if products not in ("matmul", "autograd"):
        raise ValueError(f"products must be 'matmul' or 'autograd'; got {products!r}")
    model = trajectory.model
    x = train_x.reshape(len(train_x), -1).to(dtype)
    device = x.device
    n = len(x)
    w = torch.ones(n, dtype=dtype, device=device)
    if weights is not None:
        w = torch.as_tensor(np.asarray(weights, np.float64), device=device).to(dtype)
    theta_bar = per_example_grads(model, target_x, target_y, "margin", params=trajectory.final)
    theta_bar = theta_bar.to(dtype)
    T = len(theta_bar)
    matmul = products == "matmul"
    if matmul:
        theta_bar = layer_major(trajectory.sizes, theta_bar)
    v_bar = torch.zeros_like(theta_bar)
    scores = torch.zeros(T, n, dtype=torch.float64, device=device)
    mu, lam = trajectory.momentum, trajectory.weight_decay
    for start, stop in reversed(trajectory.segments()):
        iterates = trajectory.segment(start, stop).to(dtype)
        for s in reversed(range(start, stop)):
            batch = trajectory.batches[s]
            u = torch.add(v_bar, theta_bar, alpha=-trajectory.lrs[s])
            coef = 1.0 / len(batch)
            args = (
                iterates[s - start], x[batch], train_y[batch], w[batch] * coef,
                trajectory.label_smoothing,
            )
            if matmul:
                hvp, directional = step_products(
                    trajectory.sizes, *args, u, T, hessian, trajectory.activation
                )
            else:
                hvp, loss_grads = _step_products(model, *args, u if hessian else None)
                directional = u @ loss_grads.T
            scores[:, batch] += directional.double() * coef
            theta_bar.add_(u, alpha=lam)
            if hessian:
                theta_bar.add_(hvp)
            v_bar = u.mul_(mu)
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
