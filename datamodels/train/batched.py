"""The fast path: K models trained at once with stacked parameters.

* ``train_mlp_batched``: minibatch SGD (momentum, weight decay, per-model lr schedule) on
  stacked MLP parameters; each model draws its own batches from its own subset
  (``EpochOrders``) and takes a step only when its batch is non-empty, so a model's
  trajectory is the same as if it were trained alone.
* ``train_logreg_batched``: multinomial logistic regression solved full-batch in float64 by
  ``batched_lbfgs`` to per-model gradient norm <= ``tolerance``.

The ``logreg`` objective (the one objective of ``train_logreg_batched``, the sequential
``train_logreg_one`` and ``gradients.model``'s influence functions; all build it here) is

    J(W, b) = mean_{i in S} CE(x_i W + b, y_i) + (λ_wd/2)·||W||² + (λ_b/2)·||b − mean(b)·1||²,

with λ_b = `logreg_bias_decay` (λ_wd) = ``LOGREG_BIAS_DECAY_RATIO`` · λ_wd. Without the bias
term, J has no minimiser on a subset missing a class: the CE falls monotonically as the absent
class's bias goes to −∞ (and, on a single-class subset, as the present class's goes to +∞),
so the recorded margins were wherever the solver stopped (they moved by up to 16 margin
units between tolerances 1e-6 and 1e-8 on a 10-point game). The small penalty makes J
strongly convex in every direction but one, so each subset has one optimum: a pure function
of the subset. Only the *centred* bias is penalised: adding one constant to every bias changes
no softmax, so that direction stays exactly flat (``gradients.model``'s null direction, which
influence functions project out) and, started from zero, the solution keeps mean(b) = 0.

Why 1e-3 · λ_wd: at a single-class optimum the bias gap Δ solves e^{−Δ} ≈ λ_b·Δ/C (Δ ≈ 8.5
for λ_wd = 0.05, C = 2) and the curvature along it is λ_b·(1 + Δ)·(C − 1)/C ≈ 5e-3·λ_wd, so
the margin error a gradient tolerance leaves is of the same order as on multi-class subsets,
whose weakest curvature also scales with λ_wd. Measured on the 1024 subsets of 10 two-class
digits, max |Δmargin| between tolerances 1e-6 and 1e-8: single-class 8e-4 vs multi-class
7e-4 at λ_wd = 0.05 (ratio 1e-4: 8e-3; 1e-6: 0.1; no penalty: 16), 0.11 vs 0.05 at
λ_wd = 5e-4 (ratio 1e-4: 7.2). Fits with every class present move little: at most 0.006
margin units at λ_wd = 0.05 and 0.015 at 5e-4 (300 digits, 10 classes; ratio 1e-2 would
move them 0.06 and 0.15). ``weight_decay = 0`` penalises nothing, as before (separable
subsets then have no optimum in W either).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.config import ModelConfig, TrainConfig
from datamodels.models.mlp import init_stacked, layer_sizes, stacked_forward
from datamodels.train.data import TrainData
from datamodels.train.lbfgs import batched_lbfgs
from datamodels.train.orders import EpochOrders, interval_lr, lr_factors
from datamodels.train.outcome import CheckpointRequest, Snapshot, margins_and_accuracy


def train_mlp_batched(
    data: TrainData,
    masks: np.ndarray,
    seeds: np.ndarray,
    model: ModelConfig,
    recipe: TrainConfig,
    checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """masks: bool[K, n_train], seeds: int64[K] -> (margins float32[K, n_eval],
    train_loss float32[K] (mean over the last epoch), eval_accuracy float32[K] (test split),
    snapshots of the ``checkpoints`` rows after the requested epochs)."""
    device = data.train_x.device
    K = len(seeds)
    sizes = layer_sizes(data.in_dim, model.hidden, model.depth, data.num_classes)
    initial = init_stacked([int(s) for s in seeds], sizes, device)
    params = [p.requires_grad_(True) for p in initial]
    momenta = [torch.zeros_like(p) for p in params]
    orders = EpochOrders(masks, seeds, recipe.batch_size)
    steps_per_epoch = orders.steps_per_epoch
    total_steps = steps_per_epoch * recipe.epochs
    base_lr = recipe.lr * np.ones(K)
    train_x = data.train_x.reshape(data.n_train, -1)
    B = recipe.batch_size
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    save_after = set(checkpoints.epochs) if checkpoints else set()
    snapshots: list[Snapshot] = []
    previous_save = 0
    for epoch in range(recipe.epochs):
        index_np, valid_np = orders.next_epoch()
        index = torch.from_numpy(index_np).to(device)
        valid = torch.from_numpy(valid_np).to(device, torch.float32)
        last_epoch = epoch == recipe.epochs - 1
        for step in range(orders.max_steps):
            batch_index = index[:, step * B : (step + 1) * B]
            weight = valid[:, step * B : (step + 1) * B]
            loss = _batch_loss(params, train_x, data.train_y, batch_index, weight, recipe)
            grads = torch.autograd.grad(loss.sum(), params)
            active = step < steps_per_epoch
            factors = lr_factors(recipe.schedule, epoch * steps_per_epoch + step, total_steps)
            lr = np.where(active, base_lr * factors, 0.0)
            lr_t = torch.from_numpy(lr).to(device, torch.float32)
            active_t = torch.from_numpy(active).to(device)
            _sgd_step(params, grads, momenta, lr_t, active_t, recipe)
            if last_epoch:
                loss_sum += loss.detach().double()
        if epoch + 1 in save_after:
            for row in checkpoints.rows:
                lr = interval_lr(
                    recipe.schedule, float(base_lr[row]), int(steps_per_epoch[row]),
                    recipe.epochs, previous_save, epoch,
                )
                layers = [p[row].detach().cpu().clone() for p in params]
                snapshots.append(Snapshot(row, epoch + 1, lr, layers))
            previous_save = epoch + 1
    train_loss = (loss_sum.cpu().numpy() / np.maximum(steps_per_epoch, 1)).astype(np.float32)
    with torch.no_grad():
        margins, accuracy = margins_and_accuracy(
            lambda x, sl: stacked_forward([p[sl] for p in params], x), data, K
        )
    return margins, train_loss, accuracy, snapshots


def _batch_loss(
    params: list[torch.Tensor], train_x: torch.Tensor, train_y: torch.Tensor,
    batch_index: torch.Tensor, weight: torch.Tensor, recipe: TrainConfig,
) -> torch.Tensor:
    """float[K] mean cross-entropy of every model on its own batch: ``batch_index`` int64[K, B]
    train positions, ``weight`` float[K, B] 1 for real examples and 0 for padding."""
    K = batch_index.shape[0]
    count = weight.sum(1)
    logits = stacked_forward(params, train_x[batch_index])
    per_example = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        train_y[batch_index].reshape(-1),
        reduction="none",
        label_smoothing=recipe.label_smoothing,
    ).view(K, -1)
    return (per_example * weight).sum(1) / count.clamp(min=1)


@torch.no_grad()
def _sgd_step(
    params: list[torch.Tensor], grads: tuple[torch.Tensor, ...], momenta: list[torch.Tensor],
    lr: torch.Tensor, active: torch.Tensor, recipe: TrainConfig,
) -> None:
    """One SGD step (momentum, weight decay) on stacked parameters, in place; lr: float[K]
    (0 for a model past its last step), active: bool[K] (an inactive model keeps its
    momentum buffer)."""
    K = len(lr)
    for p, g, buf in zip(params, grads, momenta, strict=True):
        shape = (K,) + (1,) * (p.ndim - 1)
        g = g + recipe.weight_decay * p
        buf.copy_(torch.where(active.view(shape), buf * recipe.momentum + g, buf))
        p.sub_(lr.view(shape) * buf)


def logreg_objective(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, num_classes: int, weight_decay: float,
    bias_decay: float | None = None,
):
    """Closure for ``batched_lbfgs``: params[K, (d+1)*C] -> (f[K], grad[K, P]).

    f_k = sum_i weights[k, i] * CE(x_i W_k + b_k, y_i) + weight_decay/2 * ||W_k||^2
          + bias_decay/2 * ||b_k - mean(b_k)||^2
    with weights = mask / subset size; ``bias_decay`` (λ_b) defaults to
    `logreg_bias_decay` (``weight_decay``), the value every ``logreg`` path uses (module
    docstring). Gradient of the bias term: λ_b·(b − mean(b))."""
    n, d = x.shape
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    if bias_decay is None:
        bias_decay = logreg_bias_decay(weight_decay)

    def fun(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K = params.shape[0]
        W = params[:, : d * num_classes].view(K, d, num_classes)
        b = params[:, d * num_classes :]
        logits = torch.matmul(x, W) + b.unsqueeze(1)
        log_norm = torch.logsumexp(logits, dim=2)
        ce = log_norm - (logits * onehot).sum(2)
        centred = b - b.mean(1, keepdim=True)
        f = (
            (weights * ce).sum(1)
            + 0.5 * weight_decay * (W * W).sum((1, 2))
            + 0.5 * bias_decay * (centred * centred).sum(1)
        )
        residual = (torch.exp(logits - log_norm.unsqueeze(2)) - onehot) * weights.unsqueeze(2)
        grad_W = torch.matmul(x.T, residual) + weight_decay * W
        grad_b = residual.sum(1) + bias_decay * centred
        return f, torch.cat([grad_W.reshape(K, -1), grad_b], dim=1)

    return fun


# λ_b / λ_wd for ``logreg``: see the module docstring for the measurements behind it.
LOGREG_BIAS_DECAY_RATIO = 1e-3


def logreg_bias_decay(weight_decay: float) -> float:
    """λ_b, the penalty on the centred ``logreg`` bias, for a given λ_wd."""
    return LOGREG_BIAS_DECAY_RATIO * float(weight_decay)


def logreg_weights(masks: np.ndarray, device: torch.device) -> torch.Tensor:
    sizes = masks.sum(1, keepdims=True)
    return torch.from_numpy(masks / np.maximum(sizes, 1)).to(device, torch.float64)


def train_logreg_batched(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, recipe: TrainConfig,
    checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """Same outputs as ``train_mlp_batched``: the minimiser of the ``logreg`` objective (module
    docstring; finite on every subset). Starts from zero: the empty subset's optimum,
    so an empty subset returns the all-zero model. ``seeds`` do not matter (convex).
    A snapshot is the solution ``[W (d×C), b (C)]`` (epoch 1, lr = ``recipe.lr``)."""
    device = data.train_x.device
    K = len(seeds)
    x = data.train_x.reshape(data.n_train, -1).double()
    C = data.num_classes
    fun = logreg_objective(x, data.train_y, logreg_weights(masks, device), C, recipe.weight_decay)
    x0 = torch.zeros(K, (x.shape[1] + 1) * C, dtype=torch.float64, device=device)
    solution = batched_lbfgs(fun, x0, tol=recipe.tolerance, max_iter=recipe.max_iter)
    params = solution.x
    loss = solution.f.float().cpu().numpy()
    loss[~solution.converged.cpu().numpy()] = np.nan  # unconverged models are reported as failures
    d = x.shape[1]

    def forward(inputs: torch.Tensor, sl: slice) -> torch.Tensor:
        W = params[sl, : d * C].view(-1, d, C)
        b = params[sl, d * C :].unsqueeze(1)
        return torch.matmul(inputs.reshape(len(inputs), -1).double(), W) + b

    margins, accuracy = margins_and_accuracy(forward, data, K)
    rows = checkpoints.rows if checkpoints else ()
    snapshots = [logreg_snapshot(row, params[row], d, C, recipe) for row in rows]
    return margins, loss, accuracy, snapshots


def logreg_snapshot(
    row: int, params: torch.Tensor, d: int, C: int, recipe: TrainConfig
) -> Snapshot:
    """A logreg solution as a one-epoch snapshot: layers ``[W (d×C), b (C)]`` in float64."""
    flat = params.detach().cpu()
    layers = [flat[: d * C].view(d, C).clone(), flat[d * C :].clone()]
    return Snapshot(row, 1, float(recipe.lr), layers)
