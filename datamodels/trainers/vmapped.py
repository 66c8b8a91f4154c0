"""K copies of a user's ``nn.Module`` trained at once: stacked parameters
(``torch.func.stack_module_state``) and ``vmap`` over ``functional_call``.

The steps are the one-at-a-time recipe's (``sequential.train_one``): model k draws the same
minibatches (``EpochOrders`` with its seed), starts from the same seeded weights and takes
the same SGD steps (momentum, coupled weight decay, its own schedule position), so the two
paths agree up to float rounding. A model whose epoch has fewer steps than the longest
sits the extra steps out (its update is masked, not zero-stepped).

Not every module can be vmapped this way. ``batch_refusal`` finds out on two examples:
a module that updates buffers in place while training (BatchNorm running statistics), one
``torch.func`` cannot transform (random ops such as dropout, data-dependent control flow),
or one whose output for an example depends on the rest of its batch (batch statistics: the
padded last batch would change them). Such modules train one at a time, with a one-line
notice.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from datamodels.config import ModelConfig, TrainConfig
from datamodels.models import architecture
from datamodels.trainers.batches import seeded_rng
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import EpochOrders, interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_and_accuracy
from datamodels.trainers.unit_progress import report

_REFUSALS: dict[tuple, str | None] = {}  # per process: a module is probed once


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0].split('. ')[0][:160]}" if text else type(err).__name__


def batch_refusal(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """Why K copies of ``module`` cannot train as one vmapped call on inputs like ``x``
    (two examples, labels ``y``); None when they can."""
    probe = copy.deepcopy(module).train()
    before = {name: b.clone() for name, b in probe.named_buffers()}
    with torch.no_grad():
        pair = probe(x)
    changed = [n for n, b in probe.named_buffers() if not torch.equal(b, before[n])]
    if changed:
        return f"it updates buffer {changed[0]!r} in place while training (running statistics)"
    params = {n: p.detach() for n, p in probe.named_parameters()}
    buffers = dict(probe.named_buffers())
    try:
        stacked = ({n: torch.stack([p, p]) for n, p in params.items()},
                   {n: torch.stack([b, b]) for n, b in buffers.items()})

        def loss(p, b, xs, ys):
            return F.cross_entropy(functional_call(probe, (p, b), (xs,)), ys)

        vmap(grad_and_value(loss))(*stacked, torch.stack([x, x]), torch.stack([y, y]))
    except Exception as err:  # noqa: BLE001 - any failure means: not vmappable
        return f"torch.func.vmap cannot run it ({_first_line(err)})"
    with torch.no_grad():
        alone = probe(x[[0, 0]])
    scale = float(pair.abs().max()) + 1e-6
    if not torch.allclose(pair[0], alone[0], rtol=1e-4, atol=1e-5 * scale):
        return "an example's output depends on the rest of its batch (batch statistics)"
    return None


def cached_refusal(model: ModelConfig, module: nn.Module, data: TrainData) -> str | None:
    key = (model.model_dump_json(), tuple(data.train_x.shape[1:]), str(data.train_x.device))
    if key not in _REFUSALS:
        with seeded_rng(0, data.train_x.device):  # the process's generators stay as they were
            _REFUSALS[key] = batch_refusal(module, data.train_x[:2], data.train_y[:2])
    return _REFUSALS[key]


def _trained_names(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> set[str]:
    """Parameters ``torch.optim`` would step: those that require grad and get one (an unused
    parameter gets no gradient, so SGD leaves it, weight decay included)."""
    probe = copy.deepcopy(module).train()
    F.cross_entropy(probe(x), y).backward()
    return {n for n, p in probe.named_parameters() if p.requires_grad and p.grad is not None}


def _state_names(module: nn.Module) -> list[str]:
    """``state_dict`` keys mapped to the names ``named_parameters``/``named_buffers`` use (a
    tied tensor appears under each of its keys in a state_dict, once among the parameters)."""
    canonical: dict[int, str] = {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        canonical.setdefault(id(tensor), name)
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(dict(module.named_buffers(remove_duplicate=False)))
    return [canonical[id(named[key])] for key in module.state_dict(keep_vars=True)]


def train_vmapped(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig,
    recipe: TrainConfig, checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]] | None:
    """The trainer contract for K factory modules at once; None (after a one-line notice)
    when the module cannot be vmapped, for the caller to train them one at a time."""
    device = data.train_y.device
    arch = architecture(model.arch)
    modules = [arch.build_module(model, data, int(s)).to(device) for s in seeds]
    if not modules:
        return None
    template = modules[0].train()
    refusal = cached_refusal(model, template, data)
    if refusal is not None:
        warnings.warn(
            f"model.factory {model.factory}: training one model at a time, not K at once: "
            f"{refusal}", stacklevel=2,
        )
        return None
    with seeded_rng(0, device):
        trained = _trained_names(template, data.train_x[:2], data.train_y[:2])
    params, buffers = stack_module_state(modules)
    params = {n: p.detach() for n, p in params.items()}
    frozen = {n: p for n, p in params.items() if n not in trained}
    weights = {n: p for n, p in params.items() if n in trained}

    def batch_loss(w, fixed, b, x, y, valid):
        logits = functional_call(template, ({**w, **fixed}, b), (x,))
        per_example = F.cross_entropy(
            logits, y, reduction="none", label_smoothing=recipe.label_smoothing
        )
        return (per_example * valid).sum() / valid.sum().clamp_min(1.0)

    step_fn = vmap(grad_and_value(batch_loss))
    K, B = len(seeds), recipe.batch_size
    orders = EpochOrders(masks, seeds, B)
    per_epoch = orders.steps_per_epoch
    total = per_epoch * recipe.epochs
    momenta = {n: torch.zeros_like(w) for n, w in weights.items()}
    rows = set(checkpoints.rows) if checkpoints else set()
    save_after = set(checkpoints.epochs) if checkpoints else set()
    names, previous_save = _state_names(template), 0
    snapshots: list[Snapshot] = []
    last_loss = np.zeros(K)
    for epoch in range(recipe.epochs):
        index, valid = orders.next_epoch()
        loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
        for s in range(orders.max_steps):
            active_np = s < per_epoch
            chosen = torch.from_numpy(index[:, s * B : (s + 1) * B]).to(device)
            mask = torch.from_numpy(valid[:, s * B : (s + 1) * B]).to(device, torch.float32)
            grads, losses = step_fn(
                weights, frozen, buffers, data.train_x[chosen], data.train_y[chosen], mask
            )
            active = torch.from_numpy(active_np).to(device)
            lr = recipe.lr * lr_factors(recipe.schedule, epoch * per_epoch + s, total)
            lr = torch.from_numpy(lr).to(device, torch.float32)
            with torch.no_grad():
                for n, w in weights.items():
                    shape = (K,) + (1,) * (w.ndim - 1)
                    g = grads[n] + recipe.weight_decay * w if recipe.weight_decay else grads[n]
                    if recipe.momentum:
                        g = torch.where(active.view(shape), recipe.momentum * momenta[n] + g,
                                        momenta[n])
                        momenta[n] = g
                    weights[n] = torch.where(active.view(shape), w - lr.view(shape) * g, w)
            loss_sum += torch.where(active, losses.double(), 0.0)
            report(epoch * orders.max_steps + s + 1, recipe.epochs * orders.max_steps)
        if epoch == recipe.epochs - 1:
            last_loss = (loss_sum.cpu().numpy() / np.maximum(per_epoch, 1)).astype(np.float32)
        if epoch + 1 in save_after:
            state = {**weights, **frozen, **buffers}
            for k in sorted(rows):
                lr_k = interval_lr(recipe.schedule, recipe.lr, int(per_epoch[k]),
                                   recipe.epochs, previous_save, epoch)
                layers = [state[n][k].detach().cpu().clone() for n in names]
                snapshots.append(Snapshot(k, epoch + 1, lr_k, layers))
            previous_save = epoch + 1

    template.eval()
    state_params = {**weights, **frozen}

    @torch.no_grad()
    def forward(x: torch.Tensor, sl: slice) -> torch.Tensor:
        p = {n: t[sl] for n, t in state_params.items()}
        b = {n: t[sl] for n, t in buffers.items()}
        run = vmap(lambda p, b, xs: functional_call(template, (p, b), (xs,)), in_dims=(0, 0, None))
        chunks = [run(p, b, x[i : i + 1024]).float() for i in range(0, len(x), 1024)]
        return torch.cat(chunks, dim=1)

    margins, accuracy = margins_and_accuracy(forward, data, K)
    return margins, np.asarray(last_loss, np.float32), accuracy, snapshots
