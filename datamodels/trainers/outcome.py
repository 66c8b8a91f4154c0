"""What a trained model is recorded by: its output on every evaluation example (the margin
by default; ``train.output``) and its test accuracy (argmax accuracy, whatever the output).

``train_batch`` sets the output of its call with ``recording(config.train.output)``, so every
trainer's ``margins_and_accuracy`` records it without each trainer threading the choice.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from datamodels.errors import ConfigError
from datamodels.models.callables import resolve_callable
from datamodels.trainers.data import TrainData


@dataclass(frozen=True)
class CheckpointRequest:
    """Which of a call's K models save checkpoints (``rows``) and after which 1-based
    ``epochs`` (``plans.checkpoint_epochs``)."""

    rows: tuple[int, ...]
    epochs: tuple[int, ...]


@dataclass
class Snapshot:
    """One model's parameters after ``epoch`` (CPU tensors, the architecture's layer order)
    and ``lr``, the mean learning rate of the steps since the previous snapshot."""

    row: int
    epoch: int
    lr: float
    params: list[torch.Tensor] = field(default_factory=list)


def margins_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits float[K, n, C], labels int64[n] -> float[K, n]: correct logit minus the largest
    other."""
    correct = logits.gather(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(2)
    others = logits.scatter(2, labels.view(1, -1, 1).expand(logits.shape[0], -1, 1), float("-inf"))
    return correct - others.amax(2)


# f(logits float[n, C], labels int64[n]) -> float[n], for one model
OutputFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def losses_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits float[K, n, C], labels int64[n] -> float[K, n]: per-example cross-entropy."""
    K, n, C = logits.shape
    flat = F.cross_entropy(logits.reshape(K * n, C), labels.repeat(K), reduction="none")
    return flat.view(K, n)


def output_function(spec: str) -> OutputFunction | None:
    """``train.output`` as a per-model function; None for ``margin`` (the default)."""
    if spec == "margin":
        return None
    if spec == "loss":
        return lambda logits, labels: losses_from_logits(logits.unsqueeze(0), labels)[0]
    return resolve_callable(spec, "train.output")


def recorded_outputs(
    logits: torch.Tensor, labels: torch.Tensor, function: OutputFunction, where: str = "output"
) -> torch.Tensor:
    """logits float[K, n, C] -> float32[K, n]: ``function`` applied to each model's logits.
    A result that is not n numbers raises one line naming ``where``."""
    rows = []
    for model_logits in logits:
        value = function(model_logits, labels)
        value = torch.as_tensor(value, dtype=torch.float32, device=logits.device)
        if value.shape != (len(labels),):
            raise ConfigError(
                f"{where} returned shape {tuple(value.shape)} for {len(labels)} examples; it "
                f"must return float[n], one number per example (logits are [n, C])"
            )
        rows.append(value)
    return torch.stack(rows) if rows else logits.new_zeros((0, len(labels)))


_RECORDED: contextvars.ContextVar[tuple[str, OutputFunction | None]] = contextvars.ContextVar(
    "recorded_output", default=("margin", None)
)


@contextmanager
def recording(spec: str) -> Iterator[None]:
    """Within the block, ``margins_and_accuracy`` records ``train.output`` = ``spec``."""
    token = _RECORDED.set((spec, output_function(spec)))
    try:
        yield
    finally:
        _RECORDED.reset(token)


@torch.no_grad()
def margins_and_accuracy(
    forward: Callable[[torch.Tensor, slice], torch.Tensor], data: TrainData, K: int,
    models_per_chunk: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``forward(eval_x, models_slice)`` -> logits[k, n_eval, C] for a slice of the K models.
    Returns (recorded outputs float32[K, n_eval]: the margins unless ``recording`` chose
    another output, test accuracy float32[K])."""
    spec, function = _RECORDED.get()
    outputs = np.empty((K, len(data.eval_y)), dtype=np.float32)
    correct = np.empty((K, data.n_test), dtype=bool)
    for start in range(0, K, models_per_chunk):
        sl = slice(start, min(K, start + models_per_chunk))
        logits = forward(data.eval_x, sl)
        margins = margins_from_logits(logits, data.eval_y)
        correct[sl] = (margins[:, : data.n_test] > 0).cpu().numpy()
        if function is not None:
            margins = recorded_outputs(logits, data.eval_y, function, f"train.output {spec}")
        outputs[sl] = margins.float().cpu().numpy()
    if data.n_test:
        accuracy = correct.mean(1).astype(np.float32)
    else:
        accuracy = np.full(K, np.nan, np.float32)
    return outputs, accuracy
