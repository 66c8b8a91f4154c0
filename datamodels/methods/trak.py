"""``trak`` (Park et al. 2023) on the first ``gradients.trak_models`` models, each ensembled
over its last ``gradients.trak_checkpoints`` saved checkpoints (default: every one),
projection dimension ``gradients.proj_dim``, damping ``gradients.trak_damping`` (relative
to the mean diagonal of ΦᵀΦ unless ``trak_damping_relative`` is false); attribution and
reweighting (1 − p) are averaged over models and checkpoints separately and multiplied (the
paper's Algorithm 1). Self scores: the leverage τ(z)_z."""

from __future__ import annotations

import torch

from datamodels.gradients.checkpointed import projection_precision, trak_values
from datamodels.methods.base import Block, GradientMethod
from datamodels.methods.devices import planned_device


class Trak(GradientMethod):
    name = "trak"
    reweights = True
    version = 2  # 2: relative damping and checkpoint ensembling by default

    @property
    def every_checkpoint(self) -> bool:  # checkpoint ensembling reads more than the last
        return self.config.gradients.trak_checkpoints != 1

    def model_count(self) -> int:
        return self.config.gradients.trak_models

    def settings(self) -> dict:
        device = planned_device(self.config.gradients)  # CPU and CUDA draw other projections
        # "products": the projection's products in float32, accumulated in float64 (scores
        # equal to the float64 products' to r = 1.0000000, not bit for bit: recomputed once)
        return {"projection": [device, projection_precision(self.config, device)],
                "products": "fp32"}

    def values(self, b: Block) -> torch.Tensor:
        tx, ty = b.target_tensors() if b.kind == "scores" else (None, None)
        return trak_values(
            self.config, b.cached, ("trak", *b.key), b.model, b.data.train_x, b.data.train_y,
            b.kind, b.rows, b.slot, tx, ty, b.history,
        )
