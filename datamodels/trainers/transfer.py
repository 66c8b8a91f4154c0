"""The transfer trainer: K source-class masks in, K margin vectors on the target out.

It wraps the project's trainers and datasets: its data is ``data.resident.TransferData`` (the
source examples as a ``TrainData`` plus the target's splits) and it trains through
``trainers.paths.train_models``, reading the features to probe where the architecture's head
declares them (``Architecture.probe_features``). Each model (Jain et al. 2022):

1. **pre-trains** the ``model`` (any architecture the project trains: ``mlp``, ``resnet9``,
   ``fastnet``, a ``model.factory`` module) with the ``train`` section on the source examples
   of its source classes: the class mask is expanded to an example mask and the models go
   through the project's trainer (``trainers.paths.train_models``: batched MLP, grouped fastnet,
   vmapped or one-at-a-time modules), K at once where that path allows, as any other run's
   do; each model comes back as its final checkpoint (the trainer's snapshot layers);
2. **transfers** to the target: the pre-trained body is kept and a new head for the target's
   classes is trained on the target's train split, either as a ``linear_probe`` (body frozen;
   the features are the input of the last linear layer: the MLP's last hidden layer, a
   module's last ``nn.Linear`` input read by a forward hook with the module in eval mode
   (``models.head``); the head solves the ``logreg`` objective on them — mean
   cross-entropy + weight_decay/2·||W||² — full-batch with the project's batched L-BFGS in
   float64 to ``transfer.tolerance``, from 0, so the same features give the same head) or by
   ``finetune`` (MLPs only: every layer, SGD with momentum 0.9, a linearly decaying lr, each
   model its own seeded batch order and head initialisation);
3. records ``train.output`` (margins by default) on the target's test split.

Every input (source and target) is normalised with the statistics of the target's train
split (per feature, or per channel for images after scaling to [0, 1]), a fixed set: so
nothing a model computes depends on the source classes its mask leaves out (not even through
the normalisation), nor on which other models share the call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.config import Config
from datamodels.data.resident import TransferData, load_transfer_data
from datamodels.models import architecture
from datamodels.models.activations import activation_for
from datamodels.models.mlp import stacked_forward
from datamodels.trainers.batched import logreg_objective
from datamodels.trainers.lbfgs import batched_lbfgs
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy, recording
from datamodels.trainers.paths import train_models

__all__ = ["TransferData", "finetune", "linear_probe", "load_transfer_data", "pretrain",
           "train_transfer"]


def pretrain(
    data: TransferData, class_masks: np.ndarray, seeds: np.ndarray, config: Config
) -> list[list[torch.Tensor]]:
    """K pre-trained models, each its final checkpoint's layers (CPU): an MLP's layer list
    ``[W1 [d, h], b1, ..., Wout, bout]``, any other architecture its ``state_dict`` tensors
    in order (what ``gradients.checkpointed.functional_model`` loads)."""
    K = len(seeds)
    request = CheckpointRequest(tuple(range(K)), (config.train.epochs,))
    # the source margins are not kept (train.output is the target's); trainers differentiate
    with recording("margin"), torch.enable_grad():
        *_, snapshots = train_models(
            data.example_masks(class_masks), seeds, data.source, config, "resident", request
        )
    by_row: dict[int, Snapshot] = {s.row: s for s in snapshots}
    return [by_row[k].params for k in range(K)]


def linear_probe(
    train_features: torch.Tensor, labels: torch.Tensor, classes: int, config: Config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heads (W [K, h, C], b [K, C]) minimising each model's ``logreg`` objective (mean
    cross-entropy + weight_decay/2·||W||², the small centred-bias penalty of
    ``train.batched``) on its own features [K, n, h]: the project's batched L-BFGS, every
    model its own line search and stopping rule, from 0. Returns them and the objective [K]
    (NaN where L-BFGS did not reach ``transfer.tolerance``)."""
    spec = config.transfer
    feats = train_features.double()
    K, n, h = feats.shape
    weights = torch.full((K, n), 1.0 / max(n, 1), dtype=torch.float64, device=feats.device)
    fun = logreg_objective(feats, labels, weights, classes, spec.weight_decay)
    x0 = torch.zeros(K, (h + 1) * classes, dtype=torch.float64, device=feats.device)
    solution = batched_lbfgs(fun, x0, tol=spec.tolerance, max_iter=spec.max_iter)
    loss = solution.f.clone()
    loss[~solution.converged] = float("nan")
    weight = solution.x[:, : h * classes].view(K, h, classes)
    bias = solution.x[:, h * classes :]
    return weight, bias, loss


def finetune(
    layers: list[torch.Tensor], data: TransferData, seeds: np.ndarray, config: Config
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stacked MLPs (body pre-trained, a new seeded head) trained on the target's train
    split with SGD; returns the layers and the last epoch's mean loss [K]."""
    spec = config.transfer
    K, device = len(seeds), data.target_train_x.device
    hidden = layers[-2].shape[1]
    heads_w, heads_b = [], []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed) ^ 0x5EED)
        bound = hidden**-0.5
        heads_w.append((torch.rand(hidden, data.target_classes, generator=gen) * 2 - 1) * bound)
        heads_b.append((torch.rand(data.target_classes, generator=gen) * 2 - 1) * bound)
    params = [p.clone().to(device) for p in layers[:-2]]
    params += [torch.stack(heads_w).to(device), torch.stack(heads_b).to(device)]
    for p in params:
        p.requires_grad_(True)
    momenta = [torch.zeros_like(p) for p in params]
    x, y = data.target_train_x.reshape(len(data.target_train_x), -1), data.target_train_y
    n, B = len(y), min(spec.batch_size, len(y))
    steps = -(-n // B)
    total, step = spec.epochs * steps, 0
    orders = [np.random.default_rng([int(s), 77]) for s in seeds]
    last = torch.zeros(K, dtype=torch.float64, device=device)
    for epoch in range(spec.epochs):
        perms = np.stack([rng.permutation(n) for rng in orders])
        if epoch == spec.epochs - 1:
            last.zero_()
        for s in range(steps):
            index = torch.from_numpy(perms[:, s * B : (s + 1) * B]).to(device)
            batch_x, batch_y = x[index], y[index]
            with torch.enable_grad():
                logits = stacked_forward(params, batch_x, activation_for(config.model))
                ce = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), batch_y.reshape(-1), reduction="none"
                ).view(K, -1).mean(1)
                grads = torch.autograd.grad(ce.sum(), params)
            lr = spec.lr * (1 - step / total)
            with torch.no_grad():
                for p, g, m in zip(params, grads, momenta, strict=True):
                    m.mul_(0.9).add_(g + spec.weight_decay * p)
                    p.sub_(lr * m)
            step += 1
            if epoch == spec.epochs - 1:
                last += ce.detach().double() / steps
    return [p.detach() for p in params], last


@torch.no_grad()
def train_transfer(
    class_masks: np.ndarray, seeds: np.ndarray, data: TransferData, config: Config
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """class_masks bool[K, n_classes], seeds int64[K] -> (outputs float32[K, n_test] on the
    target's test split, transfer loss float32[K], target test accuracy float32[K], [])."""
    K = len(seeds)
    models = pretrain(data, class_masks, seeds, config)
    if config.transfer.recipe == "linear_probe":
        # the input of the last linear layer, where the architecture's head declares it
        feats, test_feats = architecture(config.model.arch).probe_features(
            models, data, config, data.target_train_x, data.eval_x
        )
        weight, bias, loss = linear_probe(feats, data.target_train_y, data.target_classes, config)
        logits = torch.baddbmm(bias.unsqueeze(1), test_feats.double(), weight).float()
    else:
        stacked = [torch.stack(group) for group in zip(*models, strict=True)]
        params, loss = finetune(stacked, data, seeds, config)
        logits = stacked_forward(
            params, data.eval_x.reshape(len(data.eval_x), -1), activation_for(config.model)
        )
    outputs, accuracy = margins_and_accuracy(
        lambda _x, sl: logits[sl], data, K, models_per_chunk=max(K, 1)
    )
    return outputs, loss.float().cpu().numpy(), accuracy, []
