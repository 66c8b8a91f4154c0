"""The ``gradients`` section: the gradient estimators' settings (not hashed)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from datamodels.config.base import Section


class GradientsConfig(Section):
    """The gradient estimators (``datamodels.estimate_gradients``), run as Ray tasks over the
    checkpoints of ``checkpoints.plan``.

    * ``models``: how many checkpointed models ``influence``, ``influence_pert``, ``tracin``
      and ``representer`` average over (the first by model id); ``trak_models`` for TRAK.
    * ``utility``: what a score predicts the change of: the target's ``margin`` (what the
      trainer records, and what LDS compares with) or its ``loss`` (Koh & Liang's I_up,loss).
    * ``solver``: inverse-HVPs by the ``exact`` Hessian, ``cg`` or ``lissa``; ``damping`` λ
      is added to the Hessian (needed for non-convex models such as the MLP).
    * ``ekfac_damping``: λ of ``ekfac`` added to every corrected eigenvalue (beside λ_wd);
      None: ``damping``. ``ekfac_fisher``: its curvature, ``ggn`` (the Gauss–Newton matrix
      exactly, one backward pass per class) or ``sampled`` (the true Fisher with one label
      drawn from the model's prediction per example: one backward pass, the same matrix in
      expectation).
    * ``trak_damping`` λ of TRAK's kernel, by default relative (``trak_damping_relative``: in
      units of the mean diagonal of ΦᵀΦ, so it fits any model and projection);
      ``trak_checkpoints``: how many of each model's last saved checkpoints TRAK ensembles
      (None: every saved one; 1: the last only, the paper's one model per run).
    * ``proj_dim``: TRAK's random projection dimension; the projection is applied block by
      block, never held whole, in ``proj_precision`` (auto: bf16 on CUDA, fp32 on CPU).
    * ``targets_per_task`` / ``train_per_task``: how score rows / self-score rows are split
      into Ray tasks of ``num_cpus`` CPUs and ``num_gpus`` GPUs; ``chunk_size`` examples per
      vmapped per-example-gradient (and HVP) pass.
    * ``device``: where the tasks compute: ``auto`` = CUDA when ``num_gpus`` > 0 (and the
      task sees a GPU), else CPU; ``cuda`` refuses a machine without one (one line).
    * ``precision``: dtype of ``nn.Module`` architectures (resnet9, fastnet) in these tasks;
      ``logreg`` and ``mlp`` always run in float64 (the exact references).
    * ``replay_memory_mb``: ``metagradient`` / ``hydra`` keep every iterate of the replayed
      run while they fit in this bound, else (θ, v) every k steps, each segment recomputed
      when the adjoint reaches it (the same scores, bit for bit).
    * ``adjoint_precision``: the arithmetic of the ``metagradient`` / ``hydra`` adjoint (the
      replayed iterates stay float64): ``fp64`` (default, the exact reference) or ``fp32``.
    """

    models: int = Field(1, ge=1)
    utility: Literal["margin", "loss"] = "margin"
    solver: Literal["exact", "cg", "lissa"] = "exact"
    damping: float = Field(0.01, ge=0.0)
    cg_tol: float = Field(1e-8, gt=0.0)
    cg_max_iter: int = Field(500, ge=1)
    lissa_depth: int = Field(1000, ge=1)
    lissa_repeats: int = Field(1, ge=1)
    lissa_scale: float | None = Field(None, gt=0.0)
    lissa_batch_size: int | None = Field(None, ge=1)
    ekfac_damping: float | None = Field(None, ge=0.0)
    ekfac_fisher: Literal["ggn", "sampled"] = "ggn"
    proj_dim: int = Field(2048, ge=1)
    trak_models: int = Field(20, ge=1)
    # TRAK's λ, in units of the mean diagonal of ΦᵀΦ (‖Φ‖²_F / k, per model and checkpoint)
    # unless trak_damping_relative is false (then absolute)
    trak_damping: float = Field(1.0, ge=0.0)
    trak_damping_relative: bool = True
    # saved checkpoints per model TRAK ensembles (the last ones); None: every saved one
    trak_checkpoints: int | None = Field(None, ge=1)
    representer_output: Literal["margin", "true_class", "predicted_class"] = "margin"
    # the representer's final linear layer by module name (e.g. "head"); default: the last
    # nn.Linear of the module
    representer_layer: str | None = None
    targets_per_task: int = Field(128, ge=1)
    train_per_task: int = Field(512, ge=1)
    chunk_size: int = Field(256, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "fp64"] = "fp32"
    proj_precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_exact_params: int = Field(20_000, ge=1)  # larger models need solver cg or lissa
    # metagradient / hydra: bound on the replayed run's kept iterates; above it they are
    # checkpointed every k steps and each segment recomputed (gradients.metagradient)
    replay_memory_mb: float = Field(1024.0, gt=0.0)
    # metagradient / hydra: the adjoint's arithmetic (the replay stays float64); fp32 about
    # halves its time, scores within ~1e-6 relative on the digits MLP (benchmarks/metagradient.py)
    adjoint_precision: Literal["fp64", "fp32"] = "fp64"

    @model_validator(mode="after")
    def _gpus_used(self) -> GradientsConfig:
        if self.device == "cpu" and self.num_gpus > 0:
            raise ValueError(
                f"gradients.num_gpus={self.num_gpus:g} reserves GPUs that gradients.device=cpu "
                "never uses; set gradients.device to auto (or cuda), or gradients.num_gpus to 0"
            )
        return self
