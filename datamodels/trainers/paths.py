"""The trainer paths an architecture names (``Architecture.trainer``), and ``train_models``.

``TRAINERS`` maps each path to one function of the same contract: (masks bool[K, n_train],
seeds int64[K], data, config, loader, checkpoints, arch) -> (margins float32[K, n_eval],
train_loss float32[K], eval_accuracy float32[K], snapshots):

* ``batched_mlp``: K stacked MLPs per pass on resident data (``batched.py``);
* ``lbfgs``: ``logreg``'s optimum per subset, K at once or one at a time (``logreg.py``);
* ``grouped``: K conv nets as one grouped network (``grouped.py``);
* ``vmapped``: K copies of a module by ``vmap``, or one at a time when that measured faster
  on the first task or the module cannot be vmapped (``vmapped.py``, ``path_choice.py``);
* ``sequential``: one ``nn.Module`` at a time, a ``train.recipe`` included (``sequential.py``);
* ``null``: pseudo-margins from the subset sizes (``null.py``).

``train_models`` asks the architecture which path a config takes
(``Architecture.trainer_path``) and runs it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from datamodels.config import Config
from datamodels.errors import ConfigError
from datamodels.models import Architecture, architecture
from datamodels.trainers import path_choice
from datamodels.trainers.batched import train_mlp_batched
from datamodels.trainers.data import TrainData
from datamodels.trainers.grouped import train_fastnet
from datamodels.trainers.logreg import train_logreg
from datamodels.trainers.null import train_null
from datamodels.trainers.outcome import CheckpointRequest, Snapshot
from datamodels.trainers.sequential import train_sequential
from datamodels.trainers.vmapped import train_vmapped

Trained = tuple[np.ndarray, np.ndarray, np.ndarray, list[Snapshot]]


def _batched_mlp(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    return train_mlp_batched(data, masks, seeds, config.model, config.train, checkpoints)


def _lbfgs(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    return train_logreg(data, masks, seeds, config.train, config.resources.trainer, checkpoints)


def _grouped(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    return train_fastnet(
        data, masks, seeds, config.model, config.train, config.resources, checkpoints
    )


def _sequential(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    return train_sequential(
        data, masks, seeds, config.model, config.train, loader, checkpoints, arch
    )


def _vmapped(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    # K at once or one at a time: whichever measured faster for this config (path_choice)
    if path_choice.choose(config, data, masks, seeds, loader, arch).path == "sequential":
        return _sequential(masks, seeds, data, config, loader, checkpoints, arch)
    trained = train_vmapped(data, masks, seeds, config.model, config.train, checkpoints)
    if trained is None:  # the module cannot be vmapped: one at a time
        return _sequential(masks, seeds, data, config, loader, checkpoints, arch)
    return trained


def _null(masks, seeds, data, config, loader, checkpoints, arch) -> Trained:
    return train_null(masks, seeds, data, config)


TRAINERS: dict[str, Callable[..., Trained]] = {
    "batched_mlp": _batched_mlp,
    "lbfgs": _lbfgs,
    "grouped": _grouped,
    "vmapped": _vmapped,
    "sequential": _sequential,
    "null": _null,
}


def uses_batched_path(config: Config, loader: str, arch: Architecture | None = None) -> bool:
    """Whether the config trains stacked parameters on resident data (``logreg``, ``mlp``)."""
    arch = arch or architecture(config.model.arch)
    return (
        arch.stacked
        and config.train.recipe is None
        and config.resources.trainer == "batched"
        and loader == "resident"
    )


def train_models(
    masks: np.ndarray, seeds: np.ndarray, data: TrainData, config: Config, loader: str,
    checkpoints: CheckpointRequest | None, example_weights: np.ndarray | None = None,
    arch: Architecture | None = None,
) -> Trained:
    """The architecture's trainer on ``data`` (``arch``: by default ``model.arch``'s
    declaration). ``example_weights`` float[K, n_train]: per-example loss weights, taken by
    the batched ``mlp`` trainer only. Returns (margins, loss, accuracy, snapshots)."""
    arch = arch or architecture(config.model.arch)
    if example_weights is not None:
        if not (arch.example_weights and uses_batched_path(config, loader, arch)):
            raise ConfigError(
                "single_model plans (per-example loss weights) train with the batched mlp "
                f"trainer only; this config uses model.arch={config.model.arch!r}, "
                f"resources.trainer={config.resources.trainer!r}, loader {loader!r}"
            )
        return train_mlp_batched(
            data, masks, seeds, config.model, config.train, checkpoints,
            example_weights=example_weights,
        )
    path = arch.trainer_path(config, loader)
    if arch.trainer == "vmapped" and path == "sequential":  # forced (settings): said, not timed
        path_choice.choose(config, data, masks, seeds, loader, arch)
    return TRAINERS[path](masks, seeds, data, config, loader, checkpoints, arch)
