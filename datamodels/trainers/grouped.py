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
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.config import ModelConfig, ResourcesConfig, TrainConfig
from datamodels.errors import ConfigError
from datamodels.models.fastnet import MIN_SIZE, FastNet, build_fastnet, pack, patch_whitening
from datamodels.models.fastnet import unpack as unpack_state
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import interval_lr, lr_factors
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, margins_from_logits

# Measured on an H100 (README "GPU"): one network per pass, stepped by CUDA-graph replays,
# trained faster per model than grouped passes of 8 (1.14 vs 1.41 s at α = ½ on 50,000
# images), so a pass is one model unless resources.models_per_pass says otherwise.
AUTO_MODELS_PER_PASS = 1
WHITEN_IMAGES = 5000  # airbench whitens from 5,000 training images
LOOKAHEAD_EVERY = 5
MAX_TRAINERS = 17  # networks a worker keeps (a streams pass of 16 uses 16)


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
    if recipe.precision == "fp16":
        return torch.float16
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


def crop(padded: torch.Tensor, shift: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-image crops of ``padded`` [N, c, H+2r, W+2r] at offsets ``shift`` int64[N, 2]."""
    N, c, Hp, Wp = padded.shape
    H, W = size
    rows = torch.arange(H, device=padded.device).view(H, 1) * Wp
    grid = (rows + torch.arange(W, device=padded.device).view(1, W)).view(1, -1)
    offsets = (shift[:, 0] * Wp + shift[:, 1]).view(-1, 1)
    index = (grid + offsets).unsqueeze(1).expand(N, c, H * W)
    return padded.reshape(N, c, Hp * Wp).gather(2, index).view(N, c, H, W)


def _flatten(tensors: list[torch.Tensor], K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-seat ``tensors`` as views of one flat float32 buffer (returned) and give the model
    each element belongs to (int64, same length): every tensor holds K blocks along dim 0."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    owner, offset = [], 0
    for t in tensors:
        n = t.numel()
        t.data = flat[offset : offset + n].view(t.shape)
        owner.append(torch.arange(K, device=flat.device).repeat_interleave(n // K))
        offset += n
    return flat, torch.cat(owner)


class GroupTrainer:
    """One grouped network and everything its training step touches, kept by a worker across
    passes: parameters and BatchNorm statistics as views of two flat buffers (so the SGD
    step, the lookahead average and the idle-model restore are a handful of kernels), and
    static input buffers, so that on CUDA one step is one CUDA-graph replay."""

    def __init__(
        self, K: int, data: TrainData, model: ModelConfig, recipe: TrainConfig,
        device: torch.device, compile_: bool, cuda_graphs: bool = True,
    ) -> None:
        self.K, self.B, self.r = K, recipe.batch_size, recipe.translate
        self.c, self.H, self.W = data.train_x.shape[1:]
        self.device = device
        self.cast = autocast_dtype(recipe, device)
        self.momentum, self.smoothing = recipe.momentum, recipe.label_smoothing
        net = FastNet(K, data.num_classes, model.width, self.c).to(device)
        self.net = net
        self.forward = torch.compile(net) if compile_ else net
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.flat, self.owner = _flatten(self.params, K)
        buffers = [b for name, b in net.named_buffers() if "running" in name]
        self.bn, self.bn_owner = _flatten(buffers, K)
        # decoupled hyperparameters, as airbench94 converts them for torch.optim.SGD
        kilostep = 1024 * (1 + 1 / (1 - recipe.momentum))
        self.lr = recipe.lr / kilostep
        decay = recipe.weight_decay * self.B / kilostep
        shifts = {id(p) for name, p in net.named_parameters() if ".norm" in name}
        rate = [self.lr * (recipe.bias_scaler if id(p) in shifts else 1.0) for p in self.params]
        self.rate_all = self._per_element(rate)
        self.rate_frozen_whiten = self._per_element([
            0.0 if p is net.whiten.bias else v for p, v in zip(self.params, rate, strict=True)
        ])
        self.wd = self._per_element([decay / v for v in rate])
        self.momenta = torch.zeros_like(self.flat)
        self.average = self.flat.clone()
        self.bn_average = self.bn.clone()
        self.bn_saved = self.bn.clone()
        # static inputs of one step
        self.data = _static_data(data, self.r, self.cast or torch.float32)
        self.padded, self.labels = self.data.padded, self.data.labels
        self.index = torch.zeros(K * self.B, dtype=torch.long, device=device)
        self.flip = torch.zeros(K * self.B, dtype=torch.bool, device=device)
        self.shift = torch.zeros(K * self.B, 2, dtype=torch.long, device=device)
        self.factor = torch.zeros(K, device=device)
        self.on = torch.ones(K, dtype=torch.bool, device=device)
        self.rate = self.rate_all.clone()
        self.loss = torch.zeros(K, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if device.type == "cuda" and cuda_graphs:
            self._capture()

    def _per_element(self, values: list[float]) -> torch.Tensor:
        """One value per parameter -> one per element of the flat buffer."""
        return torch.cat([
            torch.full((p.numel(),), float(v), device=self.device)
            for p, v in zip(self.params, values, strict=True)
        ])

    def _step(self) -> None:
        K, B, c, H, W = self.K, self.B, self.c, self.H, self.W
        x = torch.index_select(self.padded, 0, self.index)
        if self.r:
            x = crop(x, self.shift, (H, W))
        x = torch.where(self.flip.view(-1, 1, 1, 1), x.flip(3), x)
        # [K·B, c, H, W] -> [B, K·c, H, W]: model k's batch in channel block k
        x = x.view(K, B, c, H, W).transpose(0, 1).reshape(B, K * c, H, W)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.index_select(self.labels, 0, self.index).view(K, B)
        self.bn_saved.copy_(self.bn)
        with torch.autocast(
            self.device.type, dtype=self.cast, enabled=self.cast is not None, cache_enabled=False
        ):
            logits = self.forward(x)
        logits = logits.view(B, K, -1).transpose(0, 1).float()
        per_model = F.cross_entropy(
            logits.reshape(K * B, -1), y.reshape(-1), reduction="none",
            label_smoothing=self.smoothing,
        ).view(K, B).sum(1)
        grads = torch.autograd.grad((per_model * self.on).sum(), self.params)
        with torch.no_grad():
            self.loss.copy_(per_model)
            on = self.on[self.owner]
            g = torch.cat([t.reshape(-1) for t in grads]).add_(self.wd * self.flat)
            self.momenta.copy_(torch.where(on, self.momenta * self.momentum + g, self.momenta))
            step = self.rate * self.factor[self.owner]
            self.flat.sub_(step * g.add_(self.momenta, alpha=self.momentum))
            # an idle model's BatchNorm statistics stay as they were
            self.bn.copy_(torch.where(self.on[self.bn_owner], self.bn, self.bn_saved))

    def _capture(self) -> None:
        """Record one step as a CUDA graph (warm-up steps first, on a side stream, as
        torch.cuda.graphs requires; their effect is overwritten when a pass starts)."""
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
        except Exception as err:  # noqa: BLE001 - eager steps are the same computation
            import warnings

            warnings.warn(
                f"fastnet: CUDA graph capture failed ({err}); stepping eagerly", stacklevel=2
            )
            self.graph = None

    def start(self, state: dict[str, torch.Tensor], data: TrainData) -> None:
        """A pass begins: fresh models, momenta and averages; this pass's data."""
        with torch.no_grad():
            self.net.load_state_dict(state)
            self.momenta.zero_()
            self.average.copy_(self.flat)
            self.bn_average.copy_(self.bn)
            self.data.load(data)
        self.net.train()

    def step(self, index, flip, shift, factor, on, train_whiten_bias: bool) -> torch.Tensor:
        """One SGD step of every model; returns the per-model summed batch loss (device)."""
        self.index.copy_(index, non_blocking=True)
        self.flip.copy_(flip, non_blocking=True)
        self.shift.copy_(shift, non_blocking=True)
        self.factor.copy_(factor, non_blocking=True)
        self.on.copy_(on, non_blocking=True)
        self.rate.copy_(self.rate_all if train_whiten_bias else self.rate_frozen_whiten)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()
        return self.loss

    @torch.no_grad()
    def lookahead(self, decay: torch.Tensor) -> None:
        """airbench's LookaheadState.update per model: average ← lerp(average, current,
        1 − decay); current ← average (decay 1 for an idle model: nothing moves)."""
        for average, current, owner in (
            (self.average, self.flat, self.owner), (self.bn_average, self.bn, self.bn_owner)
        ):
            average.add_((1.0 - decay)[owner] * (current - average))
            current.copy_(average)

    @torch.no_grad()
    def finish(self, lookahead: bool) -> None:
        if lookahead:  # the final model is the average (airbench)
            self.flat.copy_(self.average)
            self.bn.copy_(self.bn_average)


_TRAINERS: OrderedDict[tuple, GroupTrainer] = OrderedDict()


class _StaticData:
    """The training images, padded for translation, in the buffers every step reads; shared
    by a worker's networks of the same shapes (a streams pass reads one copy)."""

    def __init__(self, shape: tuple, r: int, dtype: torch.dtype, device: torch.device) -> None:
        n, c, H, W = shape
        self.r = r
        self.padded = torch.zeros(n, c, H + 2 * r, W + 2 * r, dtype=dtype, device=device)
        self.labels = torch.zeros(n, dtype=torch.long, device=device)
        self.source: torch.Tensor | None = None

    @torch.no_grad()
    def load(self, data: TrainData) -> None:
        if self.source is data.train_x:
            return
        r = self.r
        self.padded.copy_(F.pad(data.train_x, (r,) * 4, mode="reflect") if r else data.train_x)
        self.labels.copy_(data.train_y)
        self.source = data.train_x
        if self.padded.is_cuda:  # passes on other streams read it next
            torch.cuda.synchronize()


_STATIC: OrderedDict[tuple, _StaticData] = OrderedDict()


def _static_data(data: TrainData, r: int, dtype: torch.dtype) -> _StaticData:
    key = (tuple(data.train_x.shape), r, dtype, str(data.train_x.device))
    if key not in _STATIC:
        while len(_STATIC) >= 2:
            _STATIC.popitem(last=False)
        _STATIC[key] = _StaticData(tuple(data.train_x.shape), r, dtype, data.train_x.device)
    _STATIC.move_to_end(key)
    return _STATIC[key]


def group_trainer(
    K: int, data: TrainData, model: ModelConfig, recipe: TrainConfig, compile_: bool,
    cuda_graphs: bool = True, slot: int = 0,
) -> GroupTrainer:
    """A worker keeps its trainers (network, compiled form, CUDA graph) across tasks."""
    device = data.train_x.device
    key = (
        K, data.num_classes, model.width, tuple(data.train_x.shape), str(device), compile_,
        cuda_graphs, slot,
        recipe.batch_size, recipe.translate, recipe.momentum, recipe.lr, recipe.weight_decay,
        recipe.bias_scaler, recipe.label_smoothing, autocast_dtype(recipe, device),
    )
    if key not in _TRAINERS:
        while len(_TRAINERS) >= MAX_TRAINERS:
            _TRAINERS.popitem(last=False)
        _TRAINERS[key] = GroupTrainer(K, data, model, recipe, device, compile_, cuda_graphs)
    _TRAINERS.move_to_end(key)
    return _TRAINERS[key]


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

