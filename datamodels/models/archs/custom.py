"""``custom``: the user's ``nn.Module``, built by ``model.factory`` (``datamodels.models.
factory``). Trained K at once by ``vmap`` over stacked parameters when the module allows
(``trainers.vmapped``), else one at a time; the user's code runs under the model's seed."""

from __future__ import annotations

from typing import Any

from datamodels.models.base import Architecture


class Custom(Architecture):
    name = "custom"
    trainer = "vmapped"
    user_code = True

    def build_module(self, model, data, seed: int) -> Any:
        from datamodels.models.factory import build_factory_module  # torch

        return build_factory_module(
            model, data.num_classes, tuple(data.train_x.shape[1:]), seed
        )
