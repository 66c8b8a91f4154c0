"""``fastnet``: the airbench-style CIFAR network (``datamodels.models.fastnet``), trained K
models per pass as one grouped network (``trainers.grouped``); it records margins only and
trains with its own recipe (no ``train.recipe``)."""

from __future__ import annotations

from typing import Any

from datamodels.models.base import Architecture


class FastNet(Architecture):
    name = "fastnet"
    trainer = "grouped"
    accepts_recipe = False
    records_outputs = False

    def trainer_path(self, config, loader: str) -> str:
        return "grouped"

    def build_module(self, model, data, seed: int) -> Any:
        from datamodels.models.fastnet import build_fastnet  # torch

        return build_fastnet(
            seed, data.num_classes, model.width, in_channels=data.train_x.shape[1]
        )
