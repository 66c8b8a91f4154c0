"""``metagradient`` (Ilyas & Engstrom 2025): ∂u_t/∂w_z, the derivative of the trained margin
in z's loss weight through every step of the model's training run, replayed from its seed
and the recipe (no checkpoint is read; ``gradients.metagradient``). ``logreg``: the
influence function without damping, at the refit optimum. Self scores: ∂u_z/∂w_z, averaged
over the models whose run holds z (a point in no batch has 0 by construction)."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.errors import EstimateError
from datamodels.gradients.metagradient import (
    logreg_metagradient_scores,
    metagradient_scores,
    replay_mlp,
)
from datamodels.gradients.model import fit_logreg, logreg_model
from datamodels.methods.base import Block, GradientMethod
from datamodels.methods.traits import replay_form
from datamodels.plans import training_weights


class Metagradient(GradientMethod):
    name = "metagradient"
    source = "replay"
    on_request = True
    forms = ("mlp", "logreg")  # what it can replay: the batched trainer's MLP, a converged logreg
    adjoint_hessian = True  # False: the Hessian terms dropped (HyDRA)

    def check(self) -> None:
        if replay_form(self.config) not in self.forms:
            raise EstimateError(
                f"{self.name}: model.arch={self.config.model.arch!r} cannot be replayed; it "
                f"differentiates the batched trainer's SGD run of {' or '.join(self.forms)}: "
                "use tracin or trak for this model"
            )

    def settings(self) -> dict:
        return {"self_scores": "held"}  # the mean over the models holding a point

    def values(self, b: Block) -> torch.Tensor:
        """[targets, n_train] scores or [rows] self scores, from the model's replayed run
        (cached per worker: every unit of a model shares it)."""
        data, config, mask = b.data, self.config, b.mask.cpu().numpy()
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            tx = tx.double()
        else:
            tx, ty = data.train_x[b.rows].double(), data.train_y[b.rows]
        if replay_form(config) == "logreg":
            model = b.cached(
                ("metagradient-logreg", *b.key), lambda: self.refit_logreg(data, mask)
            )
            table = logreg_metagradient_scores(model, data.train_x, data.train_y, mask, tx, ty)
        else:
            # a single_model plan's model walks the full set's order, dropped points weighted 0
            order, weights = training_weights(
                config, b.planned.select_ids(np.array([b.model_id])), mask[None]
            )
            weights = None if weights is None else weights[0]
            trajectory = b.cached(
                ("metagradient-replay", *b.key),
                lambda: replay_mlp(
                    data.train_x, data.train_y, order[0], b.seed, config.model, config.train,
                    data.num_classes, weights,
                    memory_bytes=config.gradients.replay_memory_mb * 2**20,
                ),
            )
            precision = config.gradients.adjoint_precision
            table = metagradient_scores(
                trajectory, data.train_x, data.train_y, tx, ty, weights,
                hessian=self.adjoint_hessian,
                dtype=torch.float32 if precision == "fp32" else torch.float64,
            )
        if b.kind == "scores":
            return table
        return table[torch.arange(b.stop - b.start), torch.arange(b.start, b.stop)]

    def refit_logreg(self, data, mask: np.ndarray):
        """The model's converged ``logreg``: a pure function of its subset, refit."""
        subset = torch.from_numpy(mask).to(data.train_x.device)
        recipe = self.config.train
        params = fit_logreg(
            data.train_x[subset], data.train_y[subset], data.num_classes, recipe.weight_decay,
            recipe.tolerance, recipe.max_iter,
        )
        return logreg_model(params, data.in_dim, data.num_classes, recipe.weight_decay)

    def held_points(self, planned, model_ids: np.ndarray, masks_of):
        """For a replayed MLP: model_id -> bool[n_train], the points its run holds in its
        batches (its mask; every point for a ``single_model`` model, whose dropped points
        are in the batches at weight 0)."""
        if replay_form(self.config) != "mlp":
            return None
        ids = np.asarray(model_ids)
        order, _ = training_weights(self.config, planned().select_ids(ids), masks_of(ids))
        return {int(m): order[k] for k, m in enumerate(ids)}
