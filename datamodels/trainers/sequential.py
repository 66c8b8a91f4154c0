"""The one-model-at-a-time path: a plain ``nn.Module`` + ``torch.optim`` loop per model.

Batches come either from the resident tensors (the same per-model orders as the batched
trainer, so the same seed gives the same model up to float rounding) or from one FFCV
``Loader`` per model over its subset (``loader="per_model"``; datasets larger than memory).
This path also trains architectures without a stacked form (``resnet9``), factory modules
that cannot be vmapped (``train.vmapped``), and every model of a ``train.recipe`` (a user's
training function, ``train.custom``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.config import ModelConfig, TrainConfig
from datamodels.data.beton import subset_loader
from datamodels.models.activations import activation_for
from datamodels.models.fastnet import build_fastnet
from datamodels.models.mlp import init_params, layer_sizes, to_module
from datamodels.models.resnet9 import build_resnet9
from datamodels.trainers.batched import logreg_objective, logreg_snapshot, logreg_weights
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import EpochOrders, interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy


def build_module(model: ModelConfig, data: TrainData, seed: int) -> nn.Module:
    """The architecture's ``nn.Module`` (inputs to logits) with the initial weights of
    ``seed``; ``custom``: what ``model.factory`` returns (``train.custom``)."""
    if model.arch == "custom":
        from datamodels.trainers.custom import build_factory_module

        return build_factory_module(model, data, seed)
    if model.arch == "mlp":
        sizes = layer_sizes(data.in_dim, model.hidden, model.depth, data.num_classes)
        return nn.Sequential(
            nn.Flatten(), to_module(init_params(seed, sizes), activation_for(model))
        )
    if model.arch == "resnet9":
        return build_resnet9(seed, data.num_classes, model.width, in_channels=data.train_x.shape[1])
    if model.arch == "fastnet":
        return build_fastnet(seed, data.num_classes, model.width, in_channels=data.train_x.shape[1])
    raise ValueError(f"no nn.Module path for arch {model.arch!r}")


@contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Random ops of a user's module or recipe (dropout, ...) draw from the model's own seed,
    so a seed gives one model; the process's generators are left as they were."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) + 2)
        yield


def _resident_batches(
    data: TrainData, mask: np.ndarray, seed: int, recipe: TrainConfig
) -> Iterator[Iterator]:
    orders = EpochOrders(mask[None], np.array([seed]), recipe.batch_size)
    size, B = int(orders.subset_sizes[0]), recipe.batch_size
    for _ in range(recipe.epochs):
        index, _ = orders.next_epoch()
        chosen = torch.from_numpy(index[0, :size]).to(data.train_y.device)
        yield (
            (data.train_x[chosen[i : i + B]], data.train_y[chosen[i : i + B]])
            for i in range(0, size, B)
        )


def _ffcv_batches(
    data: TrainData, mask: np.ndarray, seed: int, recipe: TrainConfig
) -> Iterator[Iterator]:
    loader = subset_loader(data.beton_path, data.train_index[mask], recipe.batch_size, seed)
    device = data.train_y.device
    for _ in range(recipe.epochs):
        yield ((data.normalize(x), y.reshape(-1).to(device)) for x, y in loader)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel-padded random crop, per image (CIFAR recipe)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def train_one(
    data: TrainData, mask: np.ndarray, seed: int, model: ModelConfig, recipe: TrainConfig,
    loader: str = "resident", save_after: tuple[int, ...] = (),
) -> tuple[nn.Module, float, list[Snapshot]]:
    """Train one model on ``mask`` (bool[n_train]); returns (module in eval mode, last-epoch
    loss, snapshots of its ``state_dict`` tensors after the 1-based epochs ``save_after``)."""
    device = data.train_y.device
    module = build_module(model, data, seed).to(device)
    optimizer = torch.optim.SGD(
        module.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, nesterov=model.arch == "resnet9",
    )
    size = int(mask.sum())
    steps_per_epoch = -(-size // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    batches_of = _ffcv_batches if loader == "per_model" else _resident_batches
    epochs = batches_of(data, mask, seed, recipe)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    step, last_loss = 0, 0.0
    snapshots: list[Snapshot] = []
    previous_save = 0
    module.train()
    for epoch, batches in enumerate(epochs):
        losses = []
        for x, y in batches:
            factor = float(lr_factors(recipe.schedule, np.array(step), np.array(total)))
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * factor
            if model.arch == "resnet9":
                x = _augment(x, gen)
            loss = F.cross_entropy(module(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            step += 1
        if epoch == recipe.epochs - 1:
            last_loss = float(torch.stack(losses).double().mean()) if losses else 0.0
        if epoch + 1 in save_after:
            lr = interval_lr(
                recipe.schedule, recipe.lr, steps_per_epoch, recipe.epochs, previous_save, epoch
            )
            snapshots.append(Snapshot(0, epoch + 1, lr, module_layers(module, model)))
            previous_save = epoch + 1
    return module.eval(), last_loss, snapshots


def module_layers(module: nn.Module, model: ModelConfig) -> list[torch.Tensor]:
    """CPU copies of a module's parameters: for ``mlp`` in the stacked layout ``[W1 [d, h],
    b1, ...]`` (``nn.Linear`` stores W transposed), else the ``state_dict`` tensors in order."""
    if model.arch == "mlp":
        layers = []
        for linear in (m for m in module.modules() if isinstance(m, nn.Linear)):
            layers += [linear.weight.detach().T.cpu().clone(), linear.bias.detach().cpu().clone()]
        return layers
    return [t.detach().cpu().clone() for t in module.state_dict().values()]


def train_logreg_one(
    data: TrainData, mask: np.ndarray, recipe: TrainConfig
) -> tuple[torch.Tensor, float, bool]:
    """``torch.optim.LBFGS`` (strong Wolfe, float64) on one subset: (params[P], loss, converged).

    The objective is the batched trainer's (``logreg_objective`` with its default centred-bias
    penalty λ_b = ``logreg_bias_decay(weight_decay)``), so both paths share one optimum per
    subset, single-class subsets included."""
    x = data.train_x.reshape(data.n_train, -1).double()
    C = data.num_classes
    weights = logreg_weights(mask[None], x.device)
    fun = logreg_objective(x, data.train_y, weights, C, recipe.weight_decay)
    params = torch.zeros(1, (x.shape[1] + 1) * C, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [params], lr=1.0, max_iter=recipe.max_iter * 5, tolerance_grad=recipe.tolerance / 10,
        tolerance_change=0.0, history_size=10, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        f, g = fun(params.detach())
        params.grad = g
        return f.sum()

    optimizer.step(closure)
    f, g = fun(params.detach())
    return params.detach()[0], float(f[0]), bool(g.norm() <= recipe.tolerance)


def train_sequential(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig, recipe: TrainConfig,
    loader: str = "resident", checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """Same contract as the batched trainers, one model after another."""
    K = len(seeds)
    margins = np.empty((K, len(data.eval_y)), dtype=np.float32)
    losses = np.empty(K, dtype=np.float32)
    accuracy = np.empty(K, dtype=np.float32)
    snapshots: list[Snapshot] = []
    rows = set(checkpoints.rows) if checkpoints else set()
    for k in range(K):
        if model.arch == "logreg":
            params, loss, converged = train_logreg_one(data, masks[k], recipe)
            d, C = data.in_dim, data.num_classes
            if k in rows:
                snapshots.append(logreg_snapshot(k, params, d, C, recipe))
            W, b = params[: d * C].view(d, C), params[d * C :]
            forward = lambda x, sl, W=W, b=b: (  # noqa: E731
                (x.reshape(len(x), -1).double() @ W + b).unsqueeze(0)
            )
            loss = loss if converged else float("nan")
        else:
            save_after = checkpoints.epochs if k in rows else ()
            train = train_one
            if recipe.recipe is not None:
                from datamodels.trainers.custom import train_with_recipe as train
            user_code = model.arch == "custom" or recipe.recipe is not None
            with seeded_rng(int(seeds[k]), data.train_y.device) if user_code else nullcontext():
                module, loss, saved = train(
                    data, masks[k], int(seeds[k]), model, recipe, loader, save_after
                )
            for snap in saved:
                snap.row = k
            snapshots += saved
            forward = lambda x, sl, module=module: _eval_logits(module, x)  # noqa: E731
        m, a = margins_and_accuracy(forward, data, 1)
        margins[k], losses[k], accuracy[k] = m[0], loss, a[0]
    return margins, losses, accuracy, snapshots


@torch.no_grad()
def _eval_logits(module: nn.Module, x: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    logits = [module(x[i : i + chunk]).float() for i in range(0, len(x), chunk)]
    return torch.cat(logits).unsqueeze(0)
