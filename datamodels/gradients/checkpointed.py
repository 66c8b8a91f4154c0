"""Gradient estimators on a saved checkpoint: the glue between a checkpoint and the pure
estimators of this package.

The checkpoint's layers as a `FunctionalModel` (``functional_model``), the inverse-HVP
solver the config names (``solver_for``), a model's factored Hessian, and the blocks of
``influence_pert`` and TRAK values a work unit asks for (the estimator registry,
``datamodels.methods``, calls these per method).
"""

from __future__ import annotations

import numpy as np
import torch

from datamodels.config import Config
from datamodels.gradients.grads import exact_hessian
from datamodels.gradients.ihvp import ConjugateGradient, Exact, FactoredHessian, Lissa, Solver
from datamodels.gradients.influence_pert import influence_pert_scores, influence_pert_self_scores
from datamodels.gradients.model import FunctionalModel
from datamodels.gradients.module import checkpoint_model
from datamodels.gradients.trak import (
    absolute_damping,
    kernel_inverse,
    model_projection,
    one_minus_p,
    trak_attribution,
    trak_features,
    trak_leverage,
)
from datamodels.models import architecture
from datamodels.trainers.unit_progress import within

PERT_ELEMENTS = 1 << 24  # bound on T·points·input_dim per influence_pert chunk


def functional_form(config: Config) -> str:
    """How the gradient estimators see the config's architecture: ``logreg`` or ``mlp`` (flat
    float64 functions of their parameters) or ``module`` (an ``nn.Module`` through
    ``torch.func.functional_call``). The one place the gradient library asks ``model.arch``."""
    return architecture(config.model.arch).functional or "module"


def functional_model(config: Config, data, layers: list[torch.Tensor]) -> FunctionalModel:
    """A checkpoint's layers as a ``FunctionalModel`` on the data's device, in the functional
    form its architecture declares (``gradients.module.checkpoint_model``)."""
    return checkpoint_model(config, data, layers)


def projection_precision(config: Config, device: torch.device | str) -> str:
    """``gradients.proj_precision`` resolved: auto = bf16 on CUDA, fp32 on CPU."""
    choice = config.gradients.proj_precision
    if choice == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return choice


def solver_for(config: Config) -> Solver:
    g = config.gradients
    # conv nets: HVPs chunk by chunk to bound activation memory; the dense models keep one
    # saved graph over the whole subset (small, and several times faster per product)
    chunk = None if architecture(config.model.arch).dense else g.chunk_size
    if g.solver == "exact":
        return Exact(damping=g.damping)
    if g.solver == "cg":
        return ConjugateGradient(
            damping=g.damping, tol=g.cg_tol, max_iter=g.cg_max_iter, hvp_chunk=chunk
        )
    return Lissa(
        damping=g.damping,
        scale=g.lissa_scale,
        depth=g.lissa_depth,
        repeats=g.lissa_repeats,
        batch_size=g.lissa_batch_size,
        seed=config.seed,
        hvp_chunk=chunk,
    )


def factored_hessian(
    config: Config, model: FunctionalModel, x: torch.Tensor, y: torch.Tensor
) -> FactoredHessian:
    """H + λI (H = ∇²J over the model's own training subset ``x, y``), LU-factored."""
    H = exact_hessian(model, x, y)
    return FactoredHessian.of(H, config.gradients.damping, model.null_directions)


def pert_values(
    model, x_s, y_s, x_all, y_all, rows: slice, tx, ty, utility, solver, hessian
) -> torch.Tensor:
    """scores (``tx`` given): pert[t, i]·x_i over every training point (the first-order change of
    u_t when x_i goes from the all-mean input, 0 after standardisation, to its actual value);
    self: ‖∂(−ℓ_i)/∂x_i‖₁ of the training points in ``rows``."""
    d = int(np.prod(x_all.shape[1:]))
    if tx is not None:
        step = max(1, PERT_ELEMENTS // max(1, len(tx) * d))
        blocks = []
        for s in range(0, len(x_all), step):
            px, py = x_all[s : s + step], y_all[s : s + step]
            pert = influence_pert_scores(
                model,
                x_s,
                y_s,
                tx,
                ty,
                utility=utility,
                solver=solver,
                hessian=hessian,
                points_x=px,
                points_y=py,
            ).flatten(2)  # [T, m, d]
            blocks.append((pert * px.flatten(1).double().unsqueeze(0)).sum(2))
        return torch.cat(blocks, dim=1)
    pert = influence_pert_self_scores(
        model, x_s, y_s, x_all[rows], y_all[rows], utility="loss", solver=solver, hessian=hessian
    )
    return pert.flatten(1).abs().sum(1)


CHECKPOINT_SEED_STRIDE = 1_000_003  # projection seeds of earlier checkpoints: far from slots


def trak_checkpoint_models(
    model: FunctionalModel, history: list | None, count: int | None
) -> list[FunctionalModel]:
    """The checkpoints of one model TRAK ensembles, the last first: the last ``count`` of
    ``history`` [(params, lr)] (None: all of them; no history: the last checkpoint only)."""
    if not history:
        return [model]
    kept = history if count is None else history[-count:]
    return [model.with_params(params) for params, _ in reversed(kept)]


def trak_values(
    config: Config, ctx_cached, key, model, x_all, y_all, kind: str, rows: slice, slot: int, tx,
    ty, history: list | None = None,
) -> torch.Tensor:
    """TRAK's reweighting (1 − p), attribution rows or leverage of one model, each the mean
    over the model's ensembled checkpoints (``gradients.trak_checkpoints``; checkpoint j
    from the last projected with seed ``seed + slot + j·1,000,003``); the projected features
    and kernels are computed once per process and model (``ctx_cached(key, make)``)."""
    g = config.gradients
    models = trak_checkpoint_models(model, history, g.trak_checkpoints)
    if kind == "reweight":
        return sum(one_minus_p(m, x_all, y_all, g.chunk_size) for m in models) / len(models)

    precision = projection_precision(config, model.device)
    seeds = [config.seed + slot + CHECKPOINT_SEED_STRIDE * j for j in range(len(models))]

    def features():
        out = []
        for m, seed in zip(models, seeds, strict=True):
            projection = model_projection(m, g.proj_dim, seed, precision=precision)
            phi = trak_features(m, x_all, y_all, projection, "trak", g.chunk_size)
            damping = absolute_damping(phi, g.trak_damping, g.trak_damping_relative)
            out.append((projection, phi, kernel_inverse(phi, damping)))
        return out

    with within(0.0, 0.7):  # the training features (once per process and model), then the rows
        per_checkpoint = ctx_cached(
            (*key, g.proj_dim, g.trak_damping, g.trak_damping_relative, g.trak_checkpoints,
             tuple(seeds), precision),
            features,
        )
    with within(0.7, 1.0):
        total = None
        for m, (projection, phi, kernel) in zip(models, per_checkpoint, strict=True):
            if kind == "scores":
                value = trak_attribution(
                    m, phi, tx, ty, projection, chunk_size=g.chunk_size, kernel=kernel
                )
            else:
                value = trak_leverage(phi, rows, kernel)
            total = value if total is None else total + value
        return total / len(models)
