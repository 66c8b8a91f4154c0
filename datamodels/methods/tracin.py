"""``tracin`` (Pruthi et al. 2020) over every checkpoint of each model:
−Σ_k η_k Δe_k ∇u_t·∇ℓ(z), checkpoint k weighed by its mean learning rate η_k times the epochs
Δe_k since the previous one. Self scores: Σ_k η_k Δe_k‖∇ℓ(z)‖²."""

from __future__ import annotations

import torch

from datamodels.gradients.tracin import tracin_scores, tracin_self_scores
from datamodels.methods.base import Block, GradientMethod


class TracIn(GradientMethod):
    name = "tracin"
    every_checkpoint = True

    def values(self, b: Block) -> torch.Tensor:
        chunk, x, y = self.config.gradients.chunk_size, b.data.train_x, b.data.train_y
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            return tracin_scores(
                b.model, b.history, x, y, tx, ty, utility=self.config.gradients.utility,
                chunk_size=chunk,
            )
        return tracin_self_scores(b.model, b.history, x[b.rows], y[b.rows], chunk_size=chunk)
