"""``influence_pert`` (Koh & Liang 2017, input perturbation) on each model's last
checkpoint: (∂u_t/∂x_z)·x_z, the first-order change of u_t when training input z moves from
the mean input (0 after standardisation) to its value. Self scores: ‖∂(−ℓ_z)/∂x_z‖₁."""

from __future__ import annotations

import torch

from datamodels.gradients.checkpointed import pert_values, solver_for
from datamodels.methods.base import Block, GradientMethod


class InfluencePert(GradientMethod):
    name = "influence_pert"
    hessian = True

    def values(self, b: Block) -> torch.Tensor:
        x, y = b.data.train_x, b.data.train_y
        tx, ty = b.target_tensors() if b.kind == "scores" else (None, None)
        return pert_values(
            b.model, x[b.mask], y[b.mask], x, y, b.rows, tx, ty,
            self.config.gradients.utility, solver_for(self.config), b.hessian,
        )
