"""``train_batch``: K masks in, K margin vectors out (the trainer contract, DESIGN §4).

Chooses the path from the config: ``fastnet`` trains K models per pass as one grouped
network (``train.grouped``, resident data, the GPU fast path); the batched fast path (stacked
parameters, resident data) for ``logreg`` and ``mlp``; the one-model-at-a-time path for
``resnet9``, for ``resources.trainer: sequential``, and whenever data comes through one FFCV
loader per model. A ``model.factory`` module trains K at once by ``vmap`` over stacked
parameters (``train.vmapped``) when it allows, else one at a time; a ``train.recipe`` (the
user's training function, ``train.custom``) always trains one model at a time. What is
recorded per evaluation example is ``train.output`` (``train.outcome.recording``).
A transfer run (``config.transfer``) pre-trains on source classes and transfers to the
target (``train.transfer``).
A model whose loss or margins are not finite is reported as failed, not returned as data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from datamodels.config import Config
from datamodels.errors import ConfigError
from datamodels.trainers.batched import train_logreg_batched, train_mlp_batched
from datamodels.trainers.data import TrainData
from datamodels.trainers.grouped import train_fastnet
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, recording
from datamodels.trainers.sequential import train_sequential
from datamodels.trainers.vmapped import train_vmapped


@dataclass
class TrainOutcome:
    margins: np.ndarray  # float32[K, n_eval]
    train_loss: np.ndarray  # float32[K]
    eval_accuracy: np.ndarray  # float32[K]
    seconds: np.ndarray  # float32[K] wall time of the call shared equally
    failed: np.ndarray  # bool[K] non-finite loss or margins (or not converged, logreg)
    # checkpoints asked for (``row`` into K)
    snapshots: list[Snapshot] = field(default_factory=list)

    ARRAYS = ("margins", "train_loss", "eval_accuracy", "seconds", "failed")

    def take(self, rows: np.ndarray) -> TrainOutcome:
        """The outcome of models ``rows`` only (snapshots dropped)."""
        return TrainOutcome(*(getattr(self, f)[rows] for f in self.ARRAYS))


def resolve_loader(config: Config, dataset_bytes: int) -> str:
    choice = config.resources.loader
    if choice == "auto":
        return "resident" if dataset_bytes <= config.resources.resident_max_bytes else "per_model"
    return choice


def uses_batched_path(config: Config, loader: str) -> bool:
    return (
        config.model.arch in ("logreg", "mlp")
        and config.train.recipe is None
        and config.resources.trainer == "batched"
        and loader == "resident"
    )


def train_batch(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config,
    loader: str = "resident", checkpoints: CheckpointRequest | None = None,
    example_weights: np.ndarray | None = None,
) -> TrainOutcome:
    """masks: bool[K, n_train], seeds: int64[K] -> ``TrainOutcome`` (margins float32[K, n_eval];
    ``snapshots`` of the models in ``checkpoints.rows`` after the requested epochs).
    ``example_weights`` float[K, n_train] (``single_model`` plans): each model's loss weights,
    its batches drawn from ``masks``; only the batched ``mlp`` trainer takes them."""
    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64)
    if masks.ndim != 2 or masks.shape[1] != data.n_train or len(seeds) != len(masks):
        raise ValueError(
            f"masks must be bool[K, {data.n_train}] with K seeds; "
            f"got {masks.shape} and {len(seeds)} seeds"
        )
    start = time.perf_counter()
    with recording(config.train.output):
        trained = _dispatch(masks, seeds, data, config, loader, checkpoints, example_weights)
    margins, loss, accuracy, snapshots = trained
    per_model = (time.perf_counter() - start) / max(len(seeds), 1)
    seconds = np.full(len(seeds), per_model, dtype=np.float32)
    failed = ~np.isfinite(loss) | ~np.isfinite(margins).all(1)
    return TrainOutcome(margins, loss, accuracy, seconds, failed, snapshots)


def _dispatch(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config, loader: str,
    checkpoints: CheckpointRequest | None, example_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """The trainer for this config (the module docstring's rules)."""
    if config.transfer is not None:  # masks over source classes (train.transfer)
        from datamodels.trainers.transfer import train_transfer

        return train_transfer(masks, seeds, data, config)
    return train_models(masks, seeds, data, config, loader, checkpoints, example_weights)


def train_models(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config, loader: str,
    checkpoints: CheckpointRequest | None, example_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """The architecture's trainer on ``data`` (every path but transfer's; a transfer run
    pre-trains through it on its source examples). Returns (margins, loss, accuracy,
    snapshots)."""
    if example_weights is not None:
        if not uses_batched_path(config, loader) or config.model.arch != "mlp":
            raise ConfigError(
                "single_model plans (per-example loss weights) train with the batched mlp "
                f"trainer only; this config uses model.arch={config.model.arch!r}, "
                f"resources.trainer={config.resources.trainer!r}, loader {loader!r}"
            )
        return train_mlp_batched(
            data, masks, seeds, config.model, config.train, checkpoints,
            example_weights=example_weights,
        )
    if config.model.arch == "null":  # pseudo-margins from the sizes alone (train/null.py)
        from datamodels.trainers.null import train_null

        margins, loss, accuracy, snapshots = train_null(masks, seeds, data, config)
    elif config.model.arch == "fastnet":
        margins, loss, accuracy, snapshots = train_fastnet(
            data, masks, seeds, config.model, config.train, config.resources, checkpoints
        )
    elif (
        config.model.arch == "custom" and config.train.recipe is None
        and config.resources.trainer == "batched" and loader == "resident"
        and (result := train_vmapped(data, masks, seeds, config.model, config.train,
                                     checkpoints)) is not None
    ):
        margins, loss, accuracy, snapshots = result
    elif config.model.arch == "logreg" and config.resources.trainer == "batched":
        margins, loss, accuracy, snapshots = train_logreg_batched(
            data, masks, seeds, config.train, checkpoints
        )
    elif uses_batched_path(config, loader):
        margins, loss, accuracy, snapshots = train_mlp_batched(
            data, masks, seeds, config.model, config.train, checkpoints
        )
    else:
        margins, loss, accuracy, snapshots = train_sequential(
            data, masks, seeds, config.model, config.train, loader, checkpoints
        )
    return margins, loss, accuracy, snapshots
