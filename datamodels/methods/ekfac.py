"""``ekfac``: influence functions with the EK-FAC Hessian on each model's last checkpoint:
−(1/n)∇u_tᵀ(H_ekfac + λI)⁻¹∇(ℓ+R)(z), H_ekfac the Gauss–Newton matrix of the loss over the
model's own training subset, approximated per ``nn.Linear`` / ``nn.Conv2d`` layer in a
Kronecker eigenbasis with refitted eigenvalues (``gradients.ekfac``), plus λ_wd. The fit is
made once per model and process and shared by its units. Self scores: u = −loss on the point
itself. Run when named (``estimate.methods`` or ``datamodels estimate RUN -m ekfac``)."""

from __future__ import annotations

import torch

from datamodels.gradients.ekfac import ekfac_scores, ekfac_self_scores, fit_ekfac
from datamodels.methods.base import Block, GradientMethod


class Ekfac(GradientMethod):
    name = "ekfac"
    version = 1
    on_request = True  # named in estimate.methods or by ``estimate -m ekfac``: not in every run

    def damping(self) -> float:
        g = self.config.gradients
        return g.damping if g.ekfac_damping is None else g.ekfac_damping

    def values(self, b: Block) -> torch.Tensor:
        g, model, x, y = self.config.gradients, b.model, b.data.train_x, b.data.train_y
        seed = self.config.seed + b.slot

        def fit():
            return fit_ekfac(
                model, x[b.mask], y[b.mask], damping=self.damping(), fisher=g.ekfac_fisher,
                chunk_size=g.chunk_size, seed=seed,
            )

        ek = b.cached(("ekfac", *b.key, self.damping(), g.ekfac_fisher, seed), fit)
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            return ekfac_scores(model, ek, tx, ty, x, y, utility=g.utility)
        return ekfac_self_scores(model, ek, x[b.rows], y[b.rows])
