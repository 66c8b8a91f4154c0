"""``influence`` (Koh & Liang 2017) on each model's last checkpoint:
−(1/n)∇u_tᵀ(H+λI)⁻¹∇(ℓ+R)(z), n and H over the model's own training subset; every training
point is scored (outside the subset: the effect of adding it). Self scores: u = −loss on the
point itself."""

from __future__ import annotations

import torch

from datamodels.gradients.checkpointed import solver_for
from datamodels.gradients.influence import influence_scores, influence_self_scores
from datamodels.methods.base import Block, GradientMethod


class Influence(GradientMethod):
    name = "influence"
    hessian = True

    def values(self, b: Block) -> torch.Tensor:
        g, model, x, y = self.config.gradients, b.model, b.data.train_x, b.data.train_y
        common = {"solver": solver_for(self.config), "chunk_size": g.chunk_size,
                  "hessian": b.hessian}
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            return influence_scores(
                model, x[b.mask], y[b.mask], tx, ty, utility=g.utility, points_x=x,
                points_y=y, **common,
            )
        return influence_self_scores(
            model, x[b.mask], y[b.mask], utility="loss", points_x=x[b.rows],
            points_y=y[b.rows], **common,
        )
