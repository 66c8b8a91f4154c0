"""The GPU fast path: ``fastnet`` models trained K at a time as one grouped network.

The recipe is airbench94's (Jordan 2024): whitening initialisation, Nesterov SGD with
decoupled hyperparameters (lr and weight decay per 1024 examples; BatchNorm shifts step
``bias_scaler`` times faster), label smoothing, the 0.2 → 1 → 0.07 ``airbench`` schedule,
lookahead parameter averaging every 5 steps, flip + translate augmentation on the device,
and mirror (+ translate) test-time augmentation for the recorded margins. bf16 autocast and
``channels_last`` on CUDA. The network and its step are ``trainers.group_net``; this module
plans the passes (each model's batches, augmentation draws and initial state) and runs them.

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

from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.config import ModelConfig, ResourcesConfig, TrainConfig
from datamodels.errors import ConfigError
from datamodels.models.fastnet import MIN_SIZE, FastNet, build_fastnet, pack, patch_whitening
from datamodels.models.fastnet import unpack as unpack_state
from datamodels.trainers.data import TrainData
from datamodels.trainers.group_net import (  # noqa: F401 - crop, _TRAINERS: their old home
    _TRAINERS,
    GroupTrainer,
    autocast_dtype,
    crop,
    group_trainer,
)
from datamodels.trainers.orders import interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_from_logits
from datamodels.trainers.unit_progress import report

# Measured on an H100 (docs/gpu.md): one network per pass, stepped by CUDA-graph replays,
# trained faster per model than grouped passes of 8 (1.14 vs 1.41 s at α = ½ on 50,000
# images), so a pass is one model unless resources.models_per_pass says otherwise.
AUTO_MODELS_PER_PASS = 1
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
    wanted = set(checkpoints.rows) if checkpoints else set()

    def request(rows: np.ndarray) -> CheckpointRequest | None:
        if checkpoints is None:
            return None
        return CheckpointRequest(
            tuple(i for i, r in enumerate(rows) if int(r) in wanted), checkpoints.epochs
        )

    for start in range(0, K, step):
        group = np.arange(start, min(K, start + step))
        # grouped: one network of len(group) models; streams: one network per model, their
        # steps interleaved on CUDA streams (in turn, on the CPU)
        parts = [group] if resources.pass_mode == "grouped" else [group[i : i + 1] for i in
                                                                 range(len(group))]
        passes = [
            pass_steps(
                data, masks[rows], seeds[rows], model, recipe, resources.compile,
                request(rows), resources.cuda_graphs, slot=slot,
            )
            for slot, rows in enumerate(parts)
        ]
        for rows, (m, loss, snaps) in zip(parts, interleave(passes, data), strict=True):
            margins[rows], losses[rows] = m, loss
            for snap in snaps:
                snap.row = int(rows[snap.row])
            snapshots += snaps
        report(int(group[-1]) + 1, K)  # a pass of models done
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



PassResult = tuple[np.ndarray, np.ndarray, list[Snapshot]]


def interleave(passes: list, data: TrainData) -> list[PassResult]:
    """Run pass generators step by step in turn (each on its own CUDA stream on a GPU, so
    their kernels overlap); their results in order."""
    cuda = data.train_x.device.type == "cuda"
    streams = [torch.cuda.Stream() if cuda and len(passes) > 1 else None for _ in passes]
    results: list[PassResult | None] = [None] * len(passes)
    pending = set(range(len(passes)))
    while pending:
        for i in sorted(pending):
            with torch.cuda.stream(streams[i]) if streams[i] is not None else nullcontext():
                try:
                    next(passes[i])
                except StopIteration as done:
                    results[i] = done.value
                    pending.discard(i)
    if cuda:
        torch.cuda.synchronize()
    return results  # type: ignore[return-value]


def train_pass(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig,
    recipe: TrainConfig, compile_: bool = False, checkpoints: CheckpointRequest | None = None,
    cuda_graphs: bool = True,
) -> PassResult:
    """K models in one grouped network -> (margins float32[K, n_eval], last-epoch mean loss
    float32[K], snapshots)."""
    steps = pass_steps(data, masks, seeds, model, recipe, compile_, checkpoints, cuda_graphs)
    return interleave([steps], data)[0]


def pass_steps(
    data: TrainData, masks: np.ndarray, seeds: np.ndarray, model: ModelConfig,
    recipe: TrainConfig, compile_: bool = False, checkpoints: CheckpointRequest | None = None,
    cuda_graphs: bool = True, slot: int = 0,
):
    """``train_pass`` as a generator that yields after every training step and returns the
    pass's result; ``slot`` tells apart the networks of passes that run side by side."""
    device = data.train_x.device
    K, B = len(seeds), recipe.batch_size
    plan = PassPlan(masks, seeds, B, recipe.translate)
    trainer = group_trainer(K, data, model, recipe, compile_, cuda_graphs, slot)
    trainer.start(initial_state(data, plan, seeds, model), data)
    net = trainer.net

    totals = plan.steps * recipe.epochs
    global_step = np.arange(plan.max_steps * recipe.epochs)
    active = global_step[:, None] < totals[None, :]  # [steps, K]
    factors = np.where(
        active, lr_factors(recipe.schedule, global_step[:, None], totals[None, :]), 0.0
    )
    factors_t = torch.from_numpy(factors).to(device, torch.float32)
    active_t = torch.from_numpy(active).to(device)
    local = (global_step + 1)[:, None] / np.maximum(totals, 1)[None, :]
    ema_decay_t = torch.from_numpy(np.where(active, 0.95**5 * local**3, 1.0)).to(
        device, torch.float32
    )

    save_after = set(checkpoints.epochs) if checkpoints else set()
    snapshots: list[Snapshot] = []
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    previous = 0
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
            loss = trainer.step(
                index[:, cols].reshape(-1), flip[:, cols].reshape(-1),
                shift[:, cols].reshape(-1, 2), factors_t[step], active_t[step],
                train_whiten_bias,
            )
            if recipe.lookahead and (step + 1) % LOOKAHEAD_EVERY == 0:
                trainer.lookahead(ema_decay_t[step])
            if last:
                loss_sum += loss.double() * active_t[step] / B
            step += 1
            yield
        if epoch + 1 in save_after and epoch + 1 != recipe.epochs:
            snapshots += _snapshots(net, checkpoints, K, epoch + 1, previous, recipe, plan,
                                    trainer.lr)
            previous = epoch + 1
    trainer.finish(recipe.lookahead)
    if recipe.epochs in save_after:
        snapshots += _snapshots(net, checkpoints, K, recipe.epochs, previous, recipe, plan,
                                trainer.lr)
    train_loss = (loss_sum.cpu().numpy() / np.maximum(plan.steps, 1)).astype(np.float32)
    margins = eval_margins(net, trainer.forward, data, K, recipe.tta, trainer.cast)
    return margins, train_loss, snapshots



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

