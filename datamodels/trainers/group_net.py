"""The grouped network's training step: ``GroupTrainer`` holds one grouped ``FastNet`` of K
models and everything its step touches, and a worker keeps them across passes
(``group_trainer``), so a CUDA step is one graph replay. The pass loop that drives it,
model by model's own batches and schedule, is ``trainers.grouped``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from datamodels.config import ModelConfig, TrainConfig
from datamodels.models.fastnet import FastNet
from datamodels.trainers.data import TrainData

MAX_TRAINERS = 17  # networks a worker keeps (a streams pass of 16 uses 16)


def autocast_dtype(recipe: TrainConfig, device: torch.device) -> torch.dtype | None:
    if recipe.precision == "fp16":
        return torch.float16
    if recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
