"""``train_batch``: K masks in, K margin vectors out (the trainer contract).

The architecture (``model.arch``, ``datamodels.models``) names the trainer path a config takes
(``trainers.paths``): ``fastnet`` trains K models per pass as one grouped network (resident
data, the GPU fast path); ``logreg`` and ``mlp`` train stacked parameters on resident data;
``resnet9``, ``resources.trainer: sequential`` and data through one FFCV loader per model
train one model at a time; a ``model.factory`` module trains K at once by ``vmap`` when it
allows, else one at a time; a ``train.recipe`` (the user's training function,
``trainers.custom``) always trains one model at a time. What is recorded per evaluation
example is ``train.output`` (``trainers.outcome.recording``).
A transfer run (``config.transfer``) trains through the transfer trainer, which wraps these:
it pre-trains on source classes through ``train_models`` and probes or fine-tunes on the
target (``trainers.transfer``).
A model whose loss or margins are not finite is reported as failed, not returned as data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from datamodels.config import Config
from datamodels.models import Architecture, architecture
from datamodels.trainers.data import TrainData
from datamodels.trainers.outcome import CheckpointRequest, Snapshot, recording
from datamodels.trainers.paths import train_models, uses_batched_path
from datamodels.trainers.transfer import train_transfer
from datamodels.trainers.versions import TRAINER_VERSIONS

__all__ = [
    "TrainOutcome", "resolve_loader", "train_batch", "train_models", "trainer_versions",
    "uses_batched_path",
]


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


def trainer_versions(
    config: Config, loader: str, arch: Architecture | None = None
) -> dict[str, int]:
    """The trainers whose code makes this config's models, outer first, and their versions
    (``trainers.versions``): the architecture's path (``vmapped`` with ``sequential``, which it
    falls back to; ``sequential`` with ``custom`` for a ``train.recipe``), inside ``transfer``
    for a transfer run (whose pre-training data is resident)."""
    if config.transfer is not None:
        loader = "resident"
    arch = arch or architecture(config.model.arch)
    path = arch.trainer_path(config, loader)
    names = [path]
    if path == "vmapped":
        names.append("sequential")
    if "sequential" in names and config.train.recipe is not None:
        names.append("custom")
    if config.transfer is not None:
        names.insert(0, "transfer")
    return {name: TRAINER_VERSIONS[name] for name in names}


def train_batch(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config,
    loader: str = "resident", checkpoints: CheckpointRequest | None = None,
    example_weights: np.ndarray | None = None, arch: Architecture | None = None,
) -> TrainOutcome:
    """masks: bool[K, n_train], seeds: int64[K] -> ``TrainOutcome`` (margins float32[K, n_eval];
    ``snapshots`` of the models in ``checkpoints.rows`` after the requested epochs).
    ``example_weights`` float[K, n_train] (``single_model`` plans): each model's loss weights,
    its batches drawn from ``masks``; only the batched ``mlp`` trainer takes them. ``arch``: the
    architecture's declaration (default: ``model.arch``'s in ``models.ARCHITECTURES``)."""
    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64)
    if masks.ndim != 2 or masks.shape[1] != data.n_train or len(seeds) != len(masks):
        raise ValueError(
            f"masks must be bool[K, {data.n_train}] with K seeds; "
            f"got {masks.shape} and {len(seeds)} seeds"
        )
    start = time.perf_counter()
    with recording(config.train.output):
        trained = _dispatch(
            masks, seeds, data, config, loader, checkpoints, example_weights, arch
        )
    margins, loss, accuracy, snapshots = trained
    per_model = (time.perf_counter() - start) / max(len(seeds), 1)
    seconds = np.full(len(seeds), per_model, dtype=np.float32)
    failed = ~np.isfinite(loss) | ~np.isfinite(margins).all(1)
    return TrainOutcome(margins, loss, accuracy, seconds, failed, snapshots)


def _dispatch(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config, loader: str,
    checkpoints: CheckpointRequest | None, example_weights: np.ndarray | None = None,
    arch: Architecture | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]:
    """The trainer for this config: the transfer trainer around the architecture's for a
    transfer run (masks over source classes), else the architecture's."""
    if config.transfer is not None:
        return train_transfer(masks, seeds, data, config)
    return train_models(masks, seeds, data, config, loader, checkpoints, example_weights, arch)
