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
from datamodels.models.activations import RELU, Activation, activation_for
from datamodels.models.mlp import (
    accumulate_gradients,
    init_stacked,
    layer_sizes,
    output_transposed,
)
from datamodels.trainers.data import TrainData
from datamodels.trainers.lbfgs import batched_lbfgs
from datamodels.trainers.orders import EpochOrders, interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy
from datamodels.trainers.unit_progress import report, within

# Models trained together on CPU. Per model, 32 to 128 at a time train about 25% faster than
# 256 (measured, digits MLP, 1 thread): a chunk's parameters, momenta and activations (about
# 90 KB a model) stay in the core's caches, and the batched matmuls are still long enough to
# hide the per-op overhead. On a GPU all K go at once.
CPU_MODELS_PER_CHUNK = 64
# Models evaluated together: one model's hidden activations on the 1,797 digits are 460 KB.
EVAL_MODELS_PER_CHUNK = 4


def train_mlp_batched(
    data: TrainData,
    masks: np.ndarray,
    seeds: np.ndarray,
    model: ModelConfig,
    recipe: TrainConfig,
    checkpoints: CheckpointRequest | None = None,
    models_per_chunk: int | None = None,
    example_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """masks: bool[K, n_train], seeds: int64[K] -> (margins float32[K, n_eval],
    train_loss float32[K] (mean over the last epoch), eval_accuracy float32[K] (test split),
    snapshots of the ``checkpoints`` rows after the requested epochs).

    Models are trained ``models_per_chunk`` at a time (default: ``CPU_MODELS_PER_CHUNK`` on
    CPU, all K on a GPU); a model's trajectory does not depend on which others share its
    chunk, since every model has its own orders and steps only on its own batches.

    ``example_weights`` float[K, n_train] (default all ones) scales each example's term of
    the batch loss, L = Σ_{i∈batch} w_i·ℓ_i / (examples of the mask in the batch): the
    batches are still drawn from ``masks``, so a weight of 0 drops an example's loss term
    while every batch (and the whole trajectory of the others' order) stays as it was — the
    ``single_model`` plan, and the objective ``gradients.metagradient`` differentiates."""
    K = len(seeds)
    if models_per_chunk is None:
        models_per_chunk = CPU_MODELS_PER_CHUNK if data.train_x.device.type == "cpu" else K
    chunk = max(1, models_per_chunk)
    margins = np.empty((K, len(data.eval_y)), dtype=np.float32)
    train_loss = np.empty(K, dtype=np.float32)
    accuracy = np.empty(K, dtype=np.float32)
    snapshots: list[Snapshot] = []
    for start in range(0, K, chunk):
        rows = slice(start, min(K, start + chunk))
        with within(rows.start / K, rows.stop / K):  # each chunk of models its share
            part = _train_mlp_chunk(
                data, masks[rows], seeds[rows], model, recipe, _chunk_request(checkpoints, rows),
                None if example_weights is None else example_weights[rows],
            )
        margins[rows], train_loss[rows], accuracy[rows], chunk_snapshots = part
        for snap in chunk_snapshots:
            snap.row += start
        snapshots += chunk_snapshots
    snapshots.sort(key=lambda snap: (snap.epoch, snap.row))  # the order of one K-model pass
    return margins, train_loss, accuracy, snapshots


def _chunk_request(
    checkpoints: CheckpointRequest | None, rows: slice
) -> CheckpointRequest | None:
    if checkpoints is None:
        return None
    local = tuple(r - rows.start for r in checkpoints.rows if rows.start <= r < rows.stop)
    return CheckpointRequest(local, checkpoints.epochs) if local else None


@torch.no_grad()
def _train_mlp_chunk(
    data: TrainData,
    masks: np.ndarray,
    seeds: np.ndarray,
    model: ModelConfig,
    recipe: TrainConfig,
    checkpoints: CheckpointRequest | None,
    example_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """``train_mlp_batched`` for one chunk of models, all K of them stacked.

    One step: ``accumulate_gradients`` computes every model's gradient by hand. While every
    model of the chunk takes the step (most steps), the momentum update is fused into it
    (``momenta ← m·momenta + ∇``), then ``momenta += λ_wd·θ`` and ``θ -= lr_k·momenta`` run
    over one flat buffer each; the last steps of an epoch, where models with fewer batches
    sit out (and keep their momentum), go through ``_sgd_step``."""
    device = data.train_x.device
    K = len(seeds)
    sizes = layer_sizes(data.in_dim, model.hidden, model.depth, data.num_classes)
    activation = activation_for(model)
    initial = output_transposed(init_stacked([int(s) for s in seeds], sizes, device))
    initial = [p.to(data.train_x.dtype) for p in initial]  # float64 data: a float64 run
    params, layers = _flat_buffer(initial)
    momenta, momentum_layers = _flat_buffer([torch.zeros_like(p) for p in initial])
    _, grad_layers = _flat_buffer(initial)  # scratch for the steps some models sit out
    orders = EpochOrders(masks, seeds, recipe.batch_size)
    steps_per_epoch = orders.steps_per_epoch
    all_step = int(steps_per_epoch.min()) if K else 0  # steps every model of the chunk takes
    B, S = recipe.batch_size, orders.max_steps
    train_x = data.train_x.reshape(data.n_train, -1)
    batch_x = torch.empty(K, B, train_x.shape[1], dtype=train_x.dtype, device=device)
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    save_after = set(checkpoints.epochs) if checkpoints else set()
    snapshots: list[Snapshot] = []
    previous_save = 0
    for epoch in range(recipe.epochs):
        index_np, valid_np = orders.next_epoch()
        batch_index, weight, labels = _epoch_batches(
            index_np, valid_np, data.train_y, B, train_x.dtype, example_weights
        )
        lrs = _epoch_lrs(recipe, steps_per_epoch, epoch, S).to(device, train_x.dtype)
        active = torch.from_numpy(np.arange(S)[:, None] < steps_per_epoch[None, :]).to(device)
        last_epoch = epoch == recipe.epochs - 1
        for step in range(S):
            torch.index_select(train_x, 0, batch_index[step], out=batch_x.view(K * B, -1))
            fused = step < all_step
            loss = accumulate_gradients(
                layers, batch_x, labels[step], weight[step], recipe.label_smoothing,
                momentum_layers if fused else grad_layers,
                recipe.momentum if fused else 0.0, want_loss=last_epoch, activation=activation,
            )
            if fused:
                if recipe.weight_decay:
                    momenta.add_(params, alpha=recipe.weight_decay)
                for p, buf in zip(layers, momentum_layers, strict=True):
                    p.addcmul_(buf, lrs[step].view((K,) + (1,) * (p.ndim - 1)), value=-1)
            else:
                _sgd_step(layers, grad_layers, momentum_layers, lrs[step], active[step], recipe)
            if last_epoch:
                loss_sum += loss
        report(epoch + 1, recipe.epochs)
        if epoch + 1 in save_after:
            stored = output_transposed(layers)
            for row in checkpoints.rows:
                lr = interval_lr(
                    recipe.schedule, recipe.lr, int(steps_per_epoch[row]), recipe.epochs,
                    previous_save, epoch,
                )
                layers_of_row = [p[row].cpu().clone() for p in stored]
                snapshots.append(Snapshot(row, epoch + 1, lr, layers_of_row))
            previous_save = epoch + 1
    train_loss = (loss_sum.cpu().numpy() / np.maximum(steps_per_epoch, 1)).astype(np.float32)
    margins, accuracy = margins_and_accuracy(
        lambda x, sl: _eval_logits([p[sl] for p in layers], x, activation), data, K,
        models_per_chunk=EVAL_MODELS_PER_CHUNK,
    )
    return margins, train_loss, accuracy, snapshots


def _flat_buffer(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One contiguous buffer holding copies of ``tensors`` back to back, and their views in it
    (so an update of every parameter is one op)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    views, offset = [], 0
    for t in tensors:
        views.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return flat, views


def _epoch_batches(
    index: np.ndarray, valid: np.ndarray, train_y: torch.Tensor, batch_size: int,
    dtype: torch.dtype, example_weights: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch of ``EpochOrders`` (index int64[K, S·B], valid bool[K, S·B]) as per-step
    contiguous tensors: (train positions int64[S, K·B], example weights float[S, K, 1, B]:
    w_i/(real examples in the batch) or 0 for padding, labels int64[S, K, 1, B]), with w the
    ``example_weights`` float[K, n_train] (None: 1)."""
    K, width = index.shape
    S, B = width // batch_size, batch_size
    device = train_y.device
    by_step = torch.from_numpy(index.reshape(K, S, B).transpose(1, 0, 2).copy()).to(device)
    real = torch.from_numpy(valid.reshape(K, S, B).transpose(1, 0, 2).copy()).to(device)
    weight = real.to(dtype)
    weight /= weight.sum(2, keepdim=True).clamp_(min=1)
    if example_weights is not None:
        chosen = np.take_along_axis(np.asarray(example_weights, np.float64), index, axis=1)
        weight *= torch.from_numpy(chosen.reshape(K, S, B).transpose(1, 0, 2).copy()).to(
            device, dtype
        )
    weight = weight.unsqueeze(2)  # [S, K, 1, B]
    labels = train_y[by_step].unsqueeze(2)  # [S, K, 1, B]
    return by_step.view(S, K * B), weight, labels


def _epoch_lrs(
    recipe: TrainConfig, steps_per_epoch: np.ndarray, epoch: int, S: int
) -> torch.Tensor:
    """float[S, K]: the lr of every model at every step of ``epoch``, 0 past its last step."""
    step = np.arange(S)[:, None]
    total = steps_per_epoch[None, :] * recipe.epochs
    factors = lr_factors(recipe.schedule, epoch * steps_per_epoch[None, :] + step, total)
    return torch.from_numpy(np.where(step < steps_per_epoch[None, :], recipe.lr * factors, 0.0))


def _eval_logits(
    layers: list[torch.Tensor], x: torch.Tensor, activation: Activation = RELU
) -> torch.Tensor:
    """Logits float[k, n, C] (a transposed view) of k models on one shared batch x: float[n, d],
    with the output weight stored transposed."""
    h = x.reshape(len(x), -1).expand(len(layers[0]), -1, -1)
    for layer in range(len(layers) // 2 - 1):
        h = torch.baddbmm(layers[2 * layer + 1].unsqueeze(1), h, layers[2 * layer])
        h = activation.forward_(h)[0]
    return torch.baddbmm(layers[-1].unsqueeze(2), layers[-2], h.transpose(1, 2)).transpose(1, 2)


@torch.no_grad()
def _sgd_step(
    params: list[torch.Tensor], grads: list[torch.Tensor], momenta: list[torch.Tensor],
    lr: torch.Tensor, active: torch.Tensor, recipe: TrainConfig,
) -> None:
    """One SGD step (momentum, weight decay) on stacked parameters, in place; lr: float[K]
    (0 for a model past its last step), active: bool[K] (an inactive model keeps its
    momentum buffer). ``grads`` are used as scratch."""
    K = len(lr)
    for p, g, buf in zip(params, grads, momenta, strict=True):
        shape = (K,) + (1,) * (p.ndim - 1)
        g.add_(p, alpha=recipe.weight_decay).add_(buf, alpha=recipe.momentum)
        buf.copy_(torch.where(active.view(shape), g, buf))
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
    docstring). Gradient of the bias term: λ_b·(b − mean(b)). ``x`` is one design float[n, d]
    shared by the K models, or one per model, float[K, n, d] (a transfer run's probes)."""
    n, d = x.shape[-2:]
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
        grad_W = torch.matmul(x.transpose(-1, -2), residual) + weight_decay * W
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
