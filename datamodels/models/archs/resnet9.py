"""``resnet9``: the CIFAR ResNet-9 (``datamodels.models.resnet9``), one model at a time with
SGD + Nesterov momentum and random flip-and-crop augmentation."""

from __future__ import annotations

from typing import Any

from datamodels.models.base import Architecture


class ResNet9(Architecture):
    name = "resnet9"
    nesterov = True
    augments = True

    def build_module(self, model, data, seed: int) -> Any:
        from datamodels.models.resnet9 import build_resnet9  # torch

        return build_resnet9(
            seed, data.num_classes, model.width, in_channels=data.train_x.shape[1]
        )
