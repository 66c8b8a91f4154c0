"""``hydra`` (Chen et al. 2021, HyDRA): the metagradient of a replayed MLP run with the
Hessian terms dropped (``gradients.hydra``)."""

from __future__ import annotations

from datamodels.methods.metagradient import Metagradient


class Hydra(Metagradient):
    name = "hydra"
    forms = ("mlp",)
    adjoint_hessian = False
