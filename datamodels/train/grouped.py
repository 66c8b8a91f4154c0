"""The GPU fast path: ``fastnet`` models trained K at a time as one grouped network.

The recipe is airbench94's (Jordan 2024): whitening initialisation, Nesterov SGD with
decoupled hyperparameters (lr and weight decay per 1024 examples; BatchNorm shifts step
``bias_scaler`` times faster), label smoothing, the 0.2 → 1 → 0.07 ``airbench`` schedule,
lookahead parameter averaging every 5 steps, flip + translate augmentation on the device,
and mirror (+ translate) test-time augmentation for the recorded margins. bf16 autocast and
``channels_last`` on CUDA.

Every model keeps its own subset, data order, augmentation draws, initialisation, whitening
(from its own subset only: a model never sees data outside its subset) and BatchNorm
statistics, all drawn from its seed, so a model is the same whichever other models share its
pass (tests: K = 3 in one pass equals three passes of K = 1 within float rounding).

Batches are full: an epoch is ``size // B`` batches of a fresh permutation of the subset
(the remainder is left out that epoch, as in airbench); a subset smaller than B is repeated
to fill one batch. Models whose subsets give fewer steps idle at the end of the pass: no
update, no momentum, no BatchNorm statistics.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.config import ModelConfig, ResourcesConfig, TrainConfig
from datamodels.errors import ConfigError
from datamodels.models.fastnet import MIN_SIZE, FastNet, build_fastnet, pack, patch_whitening
from datamodels.models.fastnet import unpack as unpack_state
from datamodels.train.data import TrainData
from datamodels.train.orders import interval_lr, lr_factors
from datamodels.train.outcome import CheckpointRequest, Snapshot, margins_from_logits

AUTO_MODELS_PER_PASS = 8
WHITEN_IMAGES = 5000  # airbench whitens from 5,000 training images
LOOKAHEAD_EVERY = 5


def check_fastnet_data(data: TrainData) -> None:
    """One line before any training when the data cannot go through the network."""
    if not data.is_image:
        raise ConfigError(
            "model.arch=fastnet needs image data (n, channels, height, width); this dataset is "
            "flat: use model.arch mlp or logreg"
        )
    h, w = data.train_x.shape[2:]
    if min(h, w) < MIN_SIZE:
        raise ConfigError(
            f"model.arch=fastnet needs images of at least {MIN_SIZE}×{MIN_SIZE} pixels; "
            f"these are {h}×{w}: use model.arch resnet9 or mlp"
        )


def models_per_pass(resources: ResourcesConfig, K: int) -> int:
    chosen = resources.models_per_pass or AUTO_MODELS_PER_PASS
    return max(1, min(chosen, K))


def autocast_dtype(recipe: TrainConfig, device: torch.device) -> torch.dtype | None:
    if recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def train_fastnet(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig,
    recipe: TrainConfig, resources: ResourcesConfig,
    checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """The trainer contract (``train_batch``) for ``fastnet``: passes of ``models_per_pass``."""
    check_fastnet_data(data)
    K = len(seeds)
    step = models_per_pass(resources, K)
    margins = np.empty((K, len(data.eval_y)), np.float32)
    losses = np.empty(K, np.float32)
    snapshots: list[Snapshot] = []
    for start in range(0, K, step):
        rows = np.arange(start, min(K, start + step))
        wanted = checkpoints.rows if checkpoints else ()
        request = CheckpointRequest(
            tuple(int(r - start) for r in rows if r in wanted), checkpoints.epochs
        ) if checkpoints else None
        m, loss, snaps = train_pass(
            data, masks[rows], seeds[rows], model, recipe, resources.compile, request
        )
        margins[rows], losses[rows] = m, loss
        for snap in snaps:
            snap.row += start
        snapshots += snaps
    if data.n_test:
        accuracy = (margins[:, : data.n_test] > 0).mean(1).astype(np.float32)
    else:
        accuracy = np.full(K, np.nan, np.float32)
    return margins, losses, accuracy, snapshots


class PassPlan:
    """Per-model batch orders and augmentation draws of one pass, drawn from the seeds.

    ``steps[k]`` full batches per epoch; ``epoch(e)`` -> (index int64[K, S·B] train
    positions, flip bool[K, S·B], shift int64[K, S·B, 2]) with S = max steps; rows past a
    model's steps repeat its first batch (the model idles there)."""

    def __init__(self, masks: np.ndarray, seeds: np.ndarray, batch_size: int, translate: int):
        self.B, self.translate = batch_size, translate
        self.members = [np.flatnonzero(m) for m in masks]
        sizes = np.array([len(m) for m in self.members])
        self.steps = np.where(sizes > 0, np.maximum(sizes // batch_size, 1), 0)
        self.max_steps = int(self.steps.max(initial=0))
        self.rngs = [np.random.default_rng([int(s), 23]) for s in seeds]

    def epoch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        K, width = len(self.members), max(self.max_steps, 1) * self.B
        index = np.zeros((K, width), np.int64)
        flip = np.zeros((K, width), bool)
        shift = np.zeros((K, width, 2), np.int64)
        for k, (members, rng) in enumerate(zip(self.members, self.rngs, strict=True)):
            order = members[rng.permutation(len(members))]
            if len(order) == 0:
                continue
            if len(order) < self.B:
                order = np.resize(order, self.B)
            used = order[: self.steps[k] * self.B]
            index[k] = np.resize(used, width)  # idle rows repeat the model's batches
            flip[k] = rng.random(width) < 0.5
            shift[k] = rng.integers(0, 2 * self.translate + 1, size=(width, 2))
        return index, flip, shift


def whitening_images(data: TrainData, members: np.ndarray, seed: int) -> torch.Tensor:
    rng = np.random.default_rng([int(seed), 29])
    chosen = members[rng.permutation(len(members))[:WHITEN_IMAGES]]
    return data.train_x[torch.from_numpy(chosen).to(data.train_x.device)].float()


def initial_state(
    data: TrainData, plan: PassPlan, seeds: np.ndarray, model: ModelConfig
) -> dict[str, torch.Tensor]:
    """The grouped network's initial state: each model built from its seed and whitened with
    its own subset's 2×2 patches."""
    states = []
    for k, seed in enumerate(seeds):
        net = build_fastnet(int(seed), data.num_classes, model.width, data.train_x.shape[1])
        if len(plan.members[k]):
            images = whitening_images(data, plan.members[k], int(seed))
            net.whiten.weight.data.copy_(patch_whitening(images).cpu())
        states.append(net.state_dict())
    return pack(states)


_NETS: OrderedDict[tuple, tuple[FastNet, torch.nn.Module]] = OrderedDict()


def grouped_net(
    K: int, data: TrainData, model: ModelConfig, device: torch.device, compile_: bool
) -> tuple[FastNet, torch.nn.Module]:
    """A worker keeps its grouped network (and its compiled form) across tasks; each pass
    loads fresh weights into it."""
    key = (K, data.num_classes, model.width, data.train_x.shape[1], str(device), compile_)
    if key not in _NETS:
        net = FastNet(K, data.num_classes, model.width, data.train_x.shape[1]).to(device)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        _NETS[key] = (net, torch.compile(net) if compile_ else net)
        while len(_NETS) > 4:
            _NETS.popitem(last=False)
    _NETS.move_to_end(key)
    return _NETS[key]


def crop(padded: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-image crops of ``padded`` [N, c, H+2r, W+2r] at offsets ``shift`` int64[N, 2]."""
    N, c, Hp, Wp = padded.shape
    H, W = size
    rows = torch.arange(H, device=padded.device).view(H, 1) * Wp
    grid = (rows + torch.arange(W, device=padded.device).view(1, W)).view(1, -1)
    offsets = (shift[:, 0] * Wp + shift[:, 1]).view(-1, 1)
    index = (grid + offsets).unsqueeze(1).expand(N, c, H * W)
    return padded.reshape(N, c, Hp * Wp).gather(2, index).view(N, c, H, W)


def train_pass(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig,
    recipe: TrainConfig, compile_: bool = False, checkpoints: CheckpointRequest | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Snapshot]]:
    """K models in one grouped network -> (margins float32[K, n_eval], last-epoch mean loss
    float32[K], snapshots)."""
    device = data.train_x.device
    K, B, r = len(seeds), recipe.batch_size, recipe.translate
    c, H, W = data.train_x.shape[1:]
    plan = PassPlan(masks, seeds, B, r)
    net, forward = grouped_net(K, data, model, device, compile_)
    net.load_state_dict(initial_state(data, plan, seeds, model))
    cast = autocast_dtype(recipe, device)
    store_dtype = cast or torch.float32
    padded = F.pad(data.train_x, (r,) * 4, mode="reflect") if r else data.train_x
    padded = padded.to(store_dtype)

    # decoupled hyperparameters, as airbench94 converts them for torch.optim.SGD
    kilostep = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr = recipe.lr / kilostep
    decay = recipe.weight_decay * B / kilostep
    bias_lr = lr * recipe.bias_scaler
    params = [p for p in net.parameters() if p.requires_grad]
    shifts_ids = {id(p) for name, p in net.named_parameters() if ".norm" in name}
    whiten_bias = net.whiten.bias
    rates = [bias_lr if id(p) in shifts_ids else lr for p in params]
    groups = [(p, rate, decay / rate) for p, rate in zip(params, rates, strict=True)]
    momenta = [torch.zeros_like(p) for p in params]
    averaged = [t.detach().clone() for t in _averaged_tensors(net)]

    totals = plan.steps * recipe.epochs
    S_total = plan.max_steps * recipe.epochs
    global_step = np.arange(S_total)
    active = global_step[:, None] < totals[None, :]  # [S_total, K]
    factors = np.where(
        active, lr_factors(recipe.schedule, global_step[:, None], totals[None, :]), 0.0
    )
    factors_t = torch.from_numpy(factors).to(device, torch.float32)
    active_t = torch.from_numpy(active).to(device)
    any_idle = ~active.all(1)
    local = (global_step + 1)[:, None] / np.maximum(totals, 1)[None, :]
    ema_decay = np.where(active, 0.95**5 * local**3, 1.0)
    ema_decay_t = torch.from_numpy(ema_decay).to(device, torch.float32)
    bn_buffers = [b for name, b in net.named_buffers() if "running" in name]

    save_after = set(checkpoints.epochs) if checkpoints else set()
    snapshots: list[Snapshot] = []
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    last_epoch_steps = 0
    previous = 0
    net.train()
    step = 0
    for epoch in range(recipe.epochs):
        index_np, flip_np, shift_np = plan.epoch()
        index = torch.from_numpy(index_np).to(device, non_blocking=True)
        flip = torch.from_numpy(flip_np).to(device, non_blocking=True)
        shift = torch.from_numpy(shift_np).to(device, non_blocking=True)
        train_whiten_bias = epoch < recipe.whiten_bias_epochs
        last = epoch == recipe.epochs - 1
        for s in range(plan.max_steps):
            cols = slice(s * B, (s + 1) * B)
            batch = index[:, cols].reshape(-1)
            x = padded[batch]
            if r:
                x = crop(x, shift[:, cols].reshape(-1, 2), (H, W))
            x = torch.where(flip[:, cols].reshape(-1, 1, 1, 1), x.flip(3), x)
            # [K·B, c, H, W] -> [B, K·c, H, W]: model k's batch in channel block k
            x = x.view(K, B, c, H, W).transpose(0, 1).reshape(B, K * c, H, W)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = data.train_y[batch].view(K, B)
            on = active_t[step]
            saved = [b.clone() for b in bn_buffers] if any_idle[step] else None
            with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
                logits = forward(x)
            logits = logits.view(B, K, -1).transpose(0, 1).float()
            per_model = F.cross_entropy(
                logits.reshape(K * B, -1), y.reshape(-1), reduction="none",
                label_smoothing=recipe.label_smoothing,
            ).view(K, B).sum(1)
            loss = (per_model * on).sum()
            grads = torch.autograd.grad(loss, params)
            _nesterov_step(
                groups, grads, momenta, factors_t[step], on, K, recipe.momentum,
                skip=None if train_whiten_bias else whiten_bias,
            )
            if saved is not None:
                _restore_idle(bn_buffers, saved, on, K)
            if recipe.lookahead and (step + 1) % LOOKAHEAD_EVERY == 0:
                _lookahead(net, averaged, ema_decay_t[step], K)
            if last:
                loss_sum += per_model.detach().double() * on / B
            step += 1
        if last:
            last_epoch_steps = plan.steps
        if epoch + 1 in save_after and epoch + 1 != recipe.epochs:
            snapshots += _snapshots(net, checkpoints, K, epoch + 1, previous, recipe, plan, lr)
            previous = epoch + 1
    if recipe.lookahead:
        _copy_averaged(net, averaged)  # the final model is the average (airbench)
    if recipe.epochs in save_after:
        snapshots += _snapshots(net, checkpoints, K, recipe.epochs, previous, recipe, plan, lr)
    train_loss = (loss_sum.cpu().numpy() / np.maximum(last_epoch_steps, 1)).astype(np.float32)
    margins = eval_margins(net, forward, data, K, recipe.tta, cast)
    return margins, train_loss, snapshots


def _averaged_tensors(net: FastNet) -> list[torch.Tensor]:
    return [t for t in net.state_dict().values() if t.is_floating_point()]


@torch.no_grad()
def _nesterov_step(groups, grads, momenta, factor, on, K, momentum, skip) -> None:
    """torch.optim.SGD(nesterov=True)'s step with per-model lr ``lr·factor[k]`` (0 for an
    idle model, which also keeps its momentum)."""
    for (p, lr, wd), g, buf in zip(groups, grads, momenta, strict=True):
        if p is skip:
            continue
        pk, gk, bk = blocks(p, K), blocks(g, K), blocks(buf, K)
        g2 = gk + wd * pk
        bk.copy_(torch.where(per_model(on, pk), bk * momentum + g2, bk))
        pk.sub_(per_model(lr * factor, pk) * (g2 + momentum * bk))


def blocks(t: torch.Tensor, K: int) -> torch.Tensor:
    """``t`` viewed as [K, ...]: model k's block first (a view in any memory format)."""
    return t.view(K, t.shape[0] // K, *t.shape[1:])


def per_model(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float/bool[K] shaped to broadcast over ``blocks(t, K)``."""
    return values.view(-1, *(1,) * (like.ndim - 1))


@torch.no_grad()
def _restore_idle(buffers, saved, on, K) -> None:
    for b, old in zip(buffers, saved, strict=True):
        b.copy_(torch.where(per_model(on, blocks(b, K)), blocks(b, K), blocks(old, K)).view_as(b))


@torch.no_grad()
def _lookahead(net: FastNet, averaged: list[torch.Tensor], decay: torch.Tensor, K: int) -> None:
    """airbench's LookaheadState.update per model: average ← lerp(average, current, 1 − decay);
    current ← average (decay 1 for an idle model: nothing moves)."""
    for avg, cur in zip(averaged, _averaged_tensors(net), strict=True):
        if cur.ndim == 0:
            continue
        a, x = blocks(avg, K), blocks(cur, K)
        a.add_(per_model(1.0 - decay, a) * (x - a))
        x.copy_(a)


@torch.no_grad()
def _copy_averaged(net: FastNet, averaged: list[torch.Tensor]) -> None:
    for avg, cur in zip(averaged, _averaged_tensors(net), strict=True):
        if cur.ndim:
            cur.copy_(avg)


def _snapshots(net, checkpoints, K, epoch, previous, recipe, plan, lr) -> list[Snapshot]:
    """Snapshots of the ``checkpoints`` rows after 1-based ``epoch``; ``lr``: the mean SGD step
    size (of the non-BatchNorm parameters) since epoch ``previous``."""
    state = net.state_dict()
    out = []
    for row in checkpoints.rows:
        layers = list(unpack_state(state, K, row).values())
        eta = interval_lr(
            recipe.schedule, lr, int(plan.steps[row]), recipe.epochs, previous, epoch - 1
        )
        out.append(Snapshot(row, epoch, eta, layers))
    return out


@torch.no_grad()
def eval_margins(
    net: FastNet, forward, data: TrainData, K: int, tta: int, cast: torch.dtype | None,
    chunk: int = 1000,
) -> np.ndarray:
    """Margins float32[K, n_eval] in eval mode (running statistics), with ``tta`` 0: plain,
    1: mean over the mirror pair, 2: airbench's mirror + translate."""
    net.eval()
    device = data.eval_x.device

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        x = x.repeat(1, K, 1, 1)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=cast, enabled=cast is not None):
            return forward(x).view(len(x), K, -1).float()

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits_of(x) + logits_of(x.flip(3)))

    out = []
    for start in range(0, len(data.eval_x), chunk):
        x = data.eval_x[start : start + chunk]
        if tta == 0:
            logits = logits_of(x)
        elif tta == 1:
            logits = mirrored(x)
        else:
            H, W = x.shape[2:]
            p = F.pad(x, (1,) * 4, mode="reflect")
            shifted = [mirrored(p[:, :, 0:H, 0:W]), mirrored(p[:, :, 2 : H + 2, 2 : W + 2])]
            logits = 0.5 * mirrored(x) + 0.25 * (shifted[0] + shifted[1])
        out.append(logits.transpose(0, 1))
    logits = torch.cat(out, dim=1)
    net.train()
    return margins_from_logits(logits, data.eval_y).cpu().numpy().astype(np.float32)

