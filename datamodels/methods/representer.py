"""``representer`` points (Yeh et al. 2018) on each model's last checkpoint: α_z·(f_z·f_t)
on the margin classes (``gradients.representer_output``), f the input of the last linear
layer. Self scores: α_{z,y_z}‖f_z‖²."""

from __future__ import annotations

import torch

from datamodels.errors import EstimateError
from datamodels.gradients.representer import representer_scores, representer_self_scores
from datamodels.methods.base import Block, GradientMethod


class Representer(GradientMethod):
    name = "representer"

    def values(self, b: Block) -> torch.Tensor:
        g, model, x, y = self.config.gradients, b.model, b.data.train_x, b.data.train_y
        if model.head_io is None:
            raise EstimateError(
                f"representer: model.arch={self.config.model.arch!r} has no usable last linear "
                f"layer ({model.head_problem}); representer points decompose that layer, use "
                "tracin or trak for this model"
            )
        n_s = int(b.mask.sum())
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            return representer_scores(
                model, x, y, tx, ty, output=g.representer_output, n_train=n_s,
                chunk_size=g.chunk_size,
            )
        return representer_self_scores(
            model, x[b.rows], y[b.rows], n_train=n_s, chunk_size=g.chunk_size
        )
