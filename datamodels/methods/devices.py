"""Where the gradient methods' tasks compute (``gradients.device`` and ``num_gpus``)."""

from __future__ import annotations

import torch

from datamodels.errors import ConfigError, EstimateError
from datamodels.orchestrate.context import worker_name


def planned_device(gradients) -> str:
    """The device the tasks are meant to use (auto: CUDA exactly when they ask for GPUs)."""
    if gradients.device == "auto":
        return "cuda" if gradients.num_gpus > 0 else "cpu"
    return gradients.device


def check_gradient_device(gradients) -> None:
    """Refuse ``gradients.device=cuda`` where no task could get a GPU: no CUDA here and no
    GPU asked of Ray (the driver of a cluster with GPU workers may itself have none)."""
    if gradients.device == "cuda" and gradients.num_gpus == 0 and not torch.cuda.is_available():
        raise ConfigError(
            "gradients.device=cuda but this machine has no CUDA device and gradients.num_gpus "
            "is 0; use gradients.device auto or cpu, or set gradients.num_gpus > 0 on a Ray "
            "cluster with GPUs"
        )


def task_device(gradients) -> str:
    """The device of this task: auto = CUDA when GPUs were asked for and one is visible."""
    if gradients.device == "auto":
        return "cuda" if gradients.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    if gradients.device == "cuda" and not torch.cuda.is_available():
        raise EstimateError(
            f"gradients.device=cuda but worker {worker_name()} sees no CUDA device; set "
            "gradients.num_gpus > 0 so that Ray places the tasks on GPUs, or use device auto"
        )
    return gradients.device
