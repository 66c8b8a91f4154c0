"""The sections that say how the work runs and how the later stages read it (none hashed):
``resources``, ``fit``, ``estimate``, ``checkpoints``, ``evaluate`` and ``sparse_layer``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from datamodels.config.base import Section


class ResourcesConfig(Section):
    """How the work is executed; not part of the config hash."""

    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    models_per_task: int = Field(250, ge=1)
    max_in_flight: int = Field(0, ge=0)  # 0: twice the cluster's slots for this task shape
    max_attempts: int = Field(3, ge=1)
    task_retries: int = Field(3, ge=0)
    loader: Literal["auto", "resident", "per_model"] = "auto"
    resident_max_bytes: int = Field(2 * 1024**3, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trainer: Literal["batched", "sequential"] = "batched"
    threads_per_task: int = Field(0, ge=0)  # 0: num_cpus
    # fastnet: models trained at once as one grouped network (0: auto, one model a pass: the
    # fastest on an H100, docs/gpu.md); torch.compile the network (kept per worker across
    # tasks)
    models_per_pass: int = Field(0, ge=0)
    compile: bool = False
    cuda_graphs: bool = True  # fastnet on CUDA: one training step is one CUDA-graph replay
    # fastnet: a pass's models as one grouped network, or as one network each with their
    # steps interleaved on CUDA streams
    pass_mode: Literal["grouped", "streams"] = "grouped"


class FitConfig(Section):
    """The ``fit`` stage: one LASSO path per evaluation target, λ picked on held-out models."""

    plan: str = "train"
    targets: Literal["test", "all"] = "test"
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: int = 0
    n_lambdas: int = Field(20, ge=2)
    eps: float = Field(1e-3, gt=0.0, lt=1.0)
    patience: int = Field(3, ge=1)
    tol: float = Field(1e-4, gt=0.0)
    targets_per_block: int = Field(512, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class EstimateConfig(Section):
    """The ``estimate`` stage (the estimators of ``datamodels.methods``).

    * ``methods``: the estimators ``run`` (and ``estimate`` without ``-m``) computes, by
      name; null: every one the run has models or checkpoints for, except those run only on
      request and those whose cost is out of proportion for the model (exact influence on a
      Hessian measured to take more than a few minutes), each left out in one line.
    """

    plan: str = "train"
    targets: Literal["test", "all"] = "test"
    beta: tuple[float, float] = (16.0, 1.0)
    knn_k: int = Field(5, ge=1)
    methods: tuple[str, ...] | None = None

    @field_validator("methods")
    @classmethod
    def _some(cls, methods: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if methods is not None and not methods:
            raise ValueError("estimate.methods names no method; name some, or null for the default")
        return methods


class CheckpointsConfig(Section):
    """Which trained models also save their parameters (``checkpoints/``) for the gradient
    estimators. Not part of the config hash: checkpoints do not change a model, and adding
    them to a finished run makes ``train`` retrain just those models (same seeds, same
    result) to save them.

    * ``plan``: the plan whose models save checkpoints (null: none);
    * ``models``: the first N model ids of that plan (null: all of them);
    * ``epochs``: epochs (1-based) after which to save, with the learning rate in force;
      empty: the last epoch only. ``logreg`` (solved, not stepped) saves its solution once.
    """

    plan: str | None = None
    models: int | None = Field(None, ge=1)
    epochs: tuple[int, ...] = ()

    @field_validator("epochs")
    @classmethod
    def _positive(cls, epochs: tuple[int, ...]) -> tuple[int, ...]:
        if any(e < 1 for e in epochs):
            raise ValueError("checkpoints.epochs are 1-based epoch numbers (>= 1)")
        return tuple(sorted(set(epochs)))


class EvaluateConfig(Section):
    """The ``evaluate`` stage: which plan holds the held-out subsets for LDS."""

    plan: str = "eval"


class SparseLayerConfig(Section):
    """The ``sparse-layer`` stage: an elastic-net multinomial path on a checkpointed model's
    penultimate features (the input of its last linear layer), λ chosen on held-out
    training rows at a density target (Wong et al. 2021; ``datamodels.regress.glm``).

    * ``model_id``: the checkpointed model (null: the first by id); its last checkpoint.
    * ``alpha``: the L1 share of the penalty ``λ(α||W||₁ + (1−α)/2 ||W||²)``.
    * ``max_features``: the density target: the chosen λ has at most this many features in
      every class (the one with the best validation accuracy among those that do).
    * ``n_lambdas`` / ``eps``: the geometric λ grid from λ_max down to eps·λ_max; the walk
      stops once some class uses more than ``stop_factor × max_features`` features.
    * ``val_fraction`` / ``split_seed``: the held-out part of the train split for choosing λ.
    * ``top_examples``: training inputs listed per feature (those that activate it most).
    """

    model_id: int | None = Field(None, ge=0)
    alpha: float = Field(0.99, gt=0.0, le=1.0)
    max_features: int = Field(10, ge=1)
    n_lambdas: int = Field(60, ge=2)
    eps: float = Field(1e-3, gt=0.0, lt=1.0)
    stop_factor: float = Field(2.0, ge=1.0)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    split_seed: int = 0
    tol: float = Field(1e-6, gt=0.0)
    max_iter: int = Field(10_000, ge=1)
    top_examples: int = Field(6, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
