"""The run configuration: one typed, validated schema loaded from YAML, with dotted overrides.

``load_config(path, overrides)`` is the only entry point: it reads YAML, applies
``--set a.b=c`` overrides, validates (unknown keys and bad values raise ``ConfigError`` with a
one-line message naming the field and what is allowed) and returns a frozen ``Config``.

``Config.hash`` covers what decides the trained models (seed, data, model, recipe, plans);
``resources`` (how they are computed: CPUs, GPUs, models per task, loader path) and the
settings of later stages are excluded, so a run can be resumed on a different cluster and
refitted with other settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from datamodels.errors import ConfigError

HASHED_SECTIONS = ("seed", "dataset", "model", "train", "plans", "transfer")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"  # "package.module:function"


def _name_from_factory(values: Any, field: str, implied: str) -> Any:
    """A section that gives ``factory`` but no ``field`` (``name`` / ``arch``) means
    ``implied``, so ``model: {factory: ...}`` needs nothing else."""
    if isinstance(values, dict) and values.get("factory") and field not in values:
        return {**values, field: implied}
    return values


def _import_path(value: str | None, field: str) -> str | None:
    if value is not None and not re.match(IMPORT_PATH, value):
        raise ValueError(
            f"{field} must be an import path 'package.module:name' (a colon before the "
            "function's name)"
        )
    return value


class DatasetConfig(_Section):
    """Where the examples come from. ``digits`` ships with scikit-learn; ``cifar10`` reads the
    standard python-pickle archive at ``path`` (``cifar100``: ``cifar-100-python.tar.gz``, its
    100 fine labels); ``arrays`` reads a user's ``.npz``;
    ``imagefolder`` reads a folder of class sub-folders of images at ``path`` (its own
    ``train/`` and ``test/`` sub-folders when present); ``factory`` (``"package.module:load"``,
    called with ``kwargs``; ``name`` is then ``custom``) returns arrays or a
    ``torch.utils.data.Dataset`` (see ``datamodels.data.sources.load_factory_dataset``)."""

    name: Literal["digits", "cifar10", "cifar100", "arrays", "imagefolder", "custom"] = "digits"
    path: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    limit_train: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)
    eval_train: bool = True
    flip_fraction: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _custom_from_factory(cls, values: Any) -> Any:
        return _name_from_factory(values, "name", "custom")

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, factory: str | None) -> str | None:
        return _import_path(factory, "dataset.factory")

    @model_validator(mode="after")
    def _path_needed(self) -> DatasetConfig:
        if self.name in ("cifar10", "cifar100", "arrays", "imagefolder") and not self.path:
            raise ValueError(f"dataset.path is required for dataset.name={self.name!r}")
        if self.name == "custom" and not self.factory:
            raise ValueError(
                "dataset.factory is required for dataset.name='custom' "
                "(e.g. factory: mypackage.data:load)"
            )
        if self.factory and self.name != "custom":
            raise ValueError(
                f"dataset.factory loads the data itself: leave dataset.name out (or set it to "
                f"custom), not {self.name!r}"
            )
        return self


class ModelConfig(_Section):
    """The network. ``fastnet`` is the airbench-style CIFAR network trained K models per pass
    as one grouped network (``datamodels.trainers.grouped``); ``width`` is its first block's width
    (the later blocks are 4x). ``null`` trains nothing: deterministic pseudo-margins at no cost,
    for exercising the driver and store at scale. ``custom``: the ``nn.Module`` (inputs to
    logits) that ``factory`` (``"package.module:make_model"``) returns, called with ``kwargs``
    plus ``num_classes`` and ``input_shape`` when it takes them and ``kwargs`` does not give
    them; a config that gives ``factory`` may leave ``arch`` out. ``activation`` (``mlp``):
    the hidden layers' φ, ``relu`` (default), ``softplus`` (sharpness ``softplus_beta``) or
    ``gelu`` (``datamodels.models.activations``); a smooth φ makes the trained margins smooth
    in the example weights (the metagradient's single-model LDS, README)."""

    arch: Literal["logreg", "mlp", "resnet9", "fastnet", "null", "custom"] = "mlp"
    hidden: int = Field(64, ge=1)
    depth: int = Field(1, ge=1, le=8)
    # defaults leave the hash of every existing config unchanged (exclude_defaults)
    activation: Literal["relu", "softplus", "gelu"] = "relu"
    softplus_beta: float = Field(1.0, gt=0.0)
    width: int = Field(64, ge=4)
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _custom_from_factory(cls, values: Any) -> Any:
        return _name_from_factory(values, "arch", "custom")

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, factory: str | None) -> str | None:
        return _import_path(factory, "model.factory")

    @model_validator(mode="after")
    def _factory_for_custom(self) -> ModelConfig:
        if self.arch == "custom" and not self.factory:
            raise ValueError(
                "model.factory is required for model.arch='custom' "
                "(e.g. factory: mypackage.models:make_cnn)"
            )
        if self.factory and self.arch != "custom":
            raise ValueError(
                f"model.factory builds the network itself: leave model.arch out (or set it to "
                f"custom), not {self.arch!r}"
            )
        if self.activation != "relu" and self.arch != "mlp":
            raise ValueError(
                f"model.activation={self.activation!r} applies to model.arch: mlp only; "
                f"leave it out for arch {self.arch!r}"
            )
        return self


class TrainConfig(_Section):
    """The training recipe. ``logreg`` ignores the SGD fields: it is solved full-batch to
    ``tolerance`` (gradient norm) in float64, so the same subset always gives the same model."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["constant", "linear", "triangle", "airbench"] = "linear"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    tolerance: float = Field(1e-6, gt=0.0)
    max_iter: int = Field(500, ge=1)
    # ``recipe``: "package.module:train_one", a user's training function used instead of the
    # steps above, one model at a time (its contract: ``datamodels.trainers.custom``).
    # ``output``: what ``margins`` records per evaluation example: ``margin`` (correct logit
    # minus the largest other), ``loss`` (cross-entropy) or "package.module:f" with
    # f(logits float[n, C], labels int64[n]) -> float[n]
    recipe: str | None = None
    output: str = "margin"
    # fastnet only (the airbench recipe): lr and weight_decay are per 1024 examples and
    # decoupled from momentum; BatchNorm biases step ``bias_scaler`` times faster; the
    # whitening layer's bias trains for the first ``whiten_bias_epochs``; parameters are
    # averaged (lookahead) every 5 steps; flip + ``translate``-pixel augmentation on the
    # device; ``tta``: margins from 0 plain, 1 mirror, 2 mirror + translate test-time
    # augmentation; ``precision`` auto: bf16 autocast on CUDA, float32 on CPU (fp16: fp16
    # autocast without loss scaling, as airbench trains; the summed loss keeps gradients large).
    bias_scaler: float = Field(64.0, gt=0.0)
    whiten_bias_epochs: int = Field(3, ge=0)
    lookahead: bool = True
    translate: int = Field(2, ge=0, le=8)
    tta: int = Field(0, ge=0, le=2)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @field_validator("recipe")
    @classmethod
    def _recipe_path(cls, recipe: str | None) -> str | None:
        return _import_path(recipe, "train.recipe")

    @field_validator("output")
    @classmethod
    def _output_kind(cls, output: str) -> str:
        if output not in ("margin", "loss") and not re.match(IMPORT_PATH, output):
            raise ValueError(
                "train.output must be margin, loss or a function 'package.module:name' "
                "taking (logits, labels)"
            )
        return output


class PlanConfig(_Section):
    """A named set of models.

    * ``alpha``: ``count`` masks, each point included with probability ``alpha``.
    * ``alpha_grid``: for Shapley via Owen's identity, α spread over (0, 1): ``levels``
      Gauss-Legendre nodes with ``count`` masks each, or (``levels: 0``) ``count`` masks
      with α ~ U(0, 1) drawn per mask.
    * ``loo``: the full training set plus one mask per left-out point (``points``: train
      positions; all when omitted).
    * ``tmc``: ``count`` random permutations; a task trains growing prefixes of one and
      stops once test accuracy stays within ``tolerance`` of the full-data model's for
      ``patience`` consecutive prefixes (Ghorbani & Zou 2019).
    * ``single_model``: the single-model setting (Ilyas & Engstrom 2025): every model has the
      same seed, initialisation and batch order over the *full* training set; mask 0 keeps
      everything, then ``count`` masks per fraction in ``drops`` each drop that fraction of
      the points at random. A dropped point keeps its place in every batch with loss
      weight 0 (the trainer's ``example_weights``); the stored mask is the kept set.
    * ``stored``: ``count`` masks read from ``plan_masks/<name>.parquet`` (the full training
      set minus each row's ``removed`` train positions), a table written once, after the
      config, by whatever chooses the sets (`datamodels.plans.write_plan_masks`); ``train``
      skips the plan until the table exists.
    * ``removal``: a stored-mask plan whose table the ``removal`` stage writes from the score
      tables (counterfactual removal, brittleness by retraining): for ``count`` test targets
      (``targets``: explicit eval positions instead; default: correctly predicted ones, drawn
      with the config seed), each of ``methods`` and each ``k`` in ``ks`` (plus, with
      ``brittle``, the method's predicted smallest flipping k, at most ``brittle_max`` · n_train),
      the k most helpful training points are removed; mask 0 keeps every point (the baseline).

    * ``classes`` (transfer runs): ``count`` masks over the source classes, each choosing
      exactly round(``alpha`` · C) of the C source classes uniformly at random.

    ``seeds`` trainings (different seeds) per mask (for ``single_model``: one shared seed
    per replicate).
    """

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    kind: Literal[
        "alpha", "alpha_grid", "loo", "tmc", "single_model", "stored", "removal", "classes"
    ] = "alpha"
    alpha: float = Field(0.5, gt=0.0, le=1.0)
    count: int | None = Field(None, ge=1)
    seeds: int = Field(1, ge=1)
    levels: int = Field(8, ge=0, le=256)
    points: tuple[int, ...] | None = None
    tolerance: float = Field(0.01, ge=0.0)
    patience: int = Field(5, ge=1)
    drops: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5)
    # removal plans (defaults leave the hash of every other plan unchanged)
    ks: tuple[int, ...] = (10, 50)
    methods: tuple[str, ...] = ("datamodels",)
    targets: tuple[int, ...] | None = None
    brittle: bool = True
    brittle_max: float = Field(0.05, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _kind_fields(self) -> PlanConfig:
        if self.kind == "removal":
            if self.targets is None and self.count is None:
                raise ValueError(
                    f"plans.{self.name}: a removal plan needs count (how many test targets) "
                    "or targets (their eval positions)"
                )
            if not self.ks or any(k < 1 for k in self.ks):
                raise ValueError(f"plans.{self.name}.ks must be positive counts, e.g. [10, 50]")
            if not self.methods:
                raise ValueError(f"plans.{self.name}.methods must name score tables")
            return self
        if self.kind == "single_model" and (
            not self.drops or any(not 0.0 < d < 1.0 for d in self.drops)
        ):
            raise ValueError(
                f"plans.{self.name}.drops must be fractions in (0, 1), e.g. [0.01, 0.1]"
            )
        if self.kind != "loo" and self.count is None:
            raise ValueError(f"plans.{self.name}.count is required for kind {self.kind!r}")
        if self.kind == "loo" and self.points is not None and any(p < 0 for p in self.points):
            raise ValueError(f"plans.{self.name}.points must be train positions (>= 0)")
        return self


class ResourcesConfig(_Section):
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
    # fastest on an H100, README "GPU"); torch.compile the network (kept per worker across
    # tasks)
    models_per_pass: int = Field(0, ge=0)
    compile: bool = False
    cuda_graphs: bool = True  # fastnet on CUDA: one training step is one CUDA-graph replay
    # fastnet: a pass's models as one grouped network, or as one network each with their
    # steps interleaved on CUDA streams
    pass_mode: Literal["grouped", "streams"] = "grouped"


class FitConfig(_Section):
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


class EstimateConfig(_Section):
    """The ``estimate`` stage (retraining-based estimators; see ``datamodels.estimate``)."""

    plan: str = "train"
    targets: Literal["test", "all"] = "test"
    beta: tuple[float, float] = (16.0, 1.0)
    knn_k: int = Field(5, ge=1)


class CheckpointsConfig(_Section):
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


class GradientsConfig(_Section):
    """The gradient estimators (``datamodels.estimate_gradients``), run as Ray tasks over the
    checkpoints of ``checkpoints.plan``.

    * ``models``: how many checkpointed models ``influence``, ``influence_pert``, ``tracin``
      and ``representer`` average over (the first by model id); ``trak_models`` for TRAK.
    * ``utility``: what a score predicts the change of: the target's ``margin`` (what the
      trainer records, and what LDS compares with) or its ``loss`` (Koh & Liang's I_up,loss).
    * ``solver``: inverse-HVPs by the ``exact`` Hessian, ``cg`` or ``lissa``; ``damping`` λ
      is added to the Hessian (needed for non-convex models such as the MLP).
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
    proj_dim: int = Field(2048, ge=1)
    trak_models: int = Field(20, ge=1)
    trak_damping: float = Field(0.0, ge=0.0)
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


class TransferConfig(_Section):
    """Transfer-learning datamodels (Jain et al. 2022): each model pre-trains on a subset of
    the *source* dataset's classes (the masks range over source classes), is transferred to
    the target task (``dataset``: its train split is the transfer set, its test split is
    where margins are recorded) and the datamodels map source classes to target margins.

    * ``source``: any dataset kind (its train split is pre-trained on; its labels are the
      source classes; its test split is not used);
    * ``recipe``: ``linear_probe`` (a new softmax head on the frozen pre-trained features,
      solved full-batch by L-BFGS to ``tolerance``, weight decay ``weight_decay``) or
      ``finetune`` (every layer trained on the target's train split, a new head, SGD with
      ``epochs``, ``lr``, ``batch_size``, momentum 0.9 and ``weight_decay``).

    Pre-training uses the ``train`` and ``model`` sections (any architecture but ``logreg``;
    ``finetune`` needs ``model.arch: mlp``). Margins are
    recorded on the target's test split only (``dataset.eval_train`` does not apply).
    Absent (null, the default), the config hashes as it did before this section existed."""

    source: DatasetConfig
    recipe: Literal["linear_probe", "finetune"] = "linear_probe"
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.05, gt=0.0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-3, ge=0.0)
    tolerance: float = Field(1e-6, gt=0.0)
    max_iter: int = Field(2000, ge=1)


class EvaluateConfig(_Section):
    """The ``evaluate`` stage: which plan holds the held-out subsets for LDS."""

    plan: str = "eval"


class SparseLayerConfig(_Section):
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


def _default_plans() -> tuple[PlanConfig, ...]:
    return (
        PlanConfig(name="train", alpha=0.5, count=2000),
        PlanConfig(name="eval", alpha=0.5, count=200),
    )


class Config(_Section):
    name: str = "digits"
    seed: int = 0
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    plans: tuple[PlanConfig, ...] = Field(default_factory=_default_plans)
    resources: ResourcesConfig = ResourcesConfig()
    fit: FitConfig = FitConfig()
    estimate: EstimateConfig = EstimateConfig()
    checkpoints: CheckpointsConfig = CheckpointsConfig()
    gradients: GradientsConfig = GradientsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    transfer: TransferConfig | None = None
    sparse_layer: SparseLayerConfig = SparseLayerConfig()

    @field_validator("plans")
    @classmethod
    def _unique_plan_names(cls, plans: tuple[PlanConfig, ...]) -> tuple[PlanConfig, ...]:
        names = [p.name for p in plans]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"plan names must be unique; repeated: {', '.join(dupes)}")
        if not plans:
            raise ValueError("at least one plan is needed")
        return plans

    @model_validator(mode="after")
    def _checkpoint_plan(self) -> Config:
        names = [p.name for p in self.plans]
        if self.checkpoints.plan is not None and self.checkpoints.plan not in names:
            raise ValueError(
                f"checkpoints.plan {self.checkpoints.plan!r} is not a plan; "
                f"plans: {', '.join(names)}"
            )
        if self.checkpoints.plan is not None and self.plan(self.checkpoints.plan).kind == "tmc":
            raise ValueError(
                f"checkpoints.plan {self.checkpoints.plan!r} is a tmc plan "
                "(its models are prefixes of "
                "walks); choose an alpha, alpha_grid or loo plan"
            )
        return self

    @model_validator(mode="after")
    def _one_removal_plan(self) -> Config:
        removal = [p.name for p in self.plans if p.kind == "removal"]
        if len(removal) > 1:
            raise ValueError(
                f"plans {', '.join(removal)}: one removal plan per config (its tables are "
                "removals/sets.parquet and removals/results.parquet); merge their ks and methods"
            )
        stored = {p.name for p in self.plans if p.kind in ("stored", "removal")}
        if self.checkpoints.plan in stored:
            raise ValueError(
                f"checkpoints.plan {self.checkpoints.plan!r} is a stored-mask plan (its masks "
                "exist only after fit); choose an alpha, alpha_grid or loo plan"
            )
        return self

    @model_validator(mode="after")
    def _single_model_needs_mlp(self) -> Config:
        single = [p.name for p in self.plans if p.kind == "single_model"]
        if single and (self.model.arch != "mlp" or self.resources.trainer != "batched"):
            raise ValueError(
                f"plans {', '.join(single)}: single_model plans (per-example loss weights) "
                "train with the batched mlp trainer only (model.arch: mlp, "
                f"resources.trainer: batched); this config has model.arch={self.model.arch!r}"
            )
        return self

    @model_validator(mode="after")
    def _transfer_fields(self) -> Config:
        classes = [p.name for p in self.plans if p.kind == "classes"]
        if self.transfer is None:
            if classes:
                raise ValueError(
                    f"plans {', '.join(classes)}: kind classes samples source classes; add a "
                    "transfer section (transfer.source) or use kind alpha"
                )
            return self
        wrong = [
            p.name for p in self.plans if p.kind in ("tmc", "single_model", "loo", "removal")
        ]
        if wrong:
            raise ValueError(
                f"plans {', '.join(wrong)}: a transfer run's masks are over source classes; "
                "use plan kinds classes, alpha, alpha_grid or stored"
            )
        if self.model.arch in ("logreg", "null"):
            raise ValueError(
                "transfer runs pre-train a network whose body is kept (model.arch mlp, "
                "resnet9, fastnet or a model.factory module); this config has "
                f"model.arch={self.model.arch!r}"
            )
        if self.transfer.recipe == "finetune" and self.model.arch != "mlp":
            raise ValueError(
                f"transfer.recipe finetune trains mlp models only; model.arch="
                f"{self.model.arch!r} transfers with transfer.recipe: linear_probe"
            )
        if self.checkpoints.plan is not None:
            raise ValueError(
                "transfer runs save no checkpoints (the gradient estimators need one model "
                "per training set); set checkpoints.plan to null"
            )
        return self

    def plan(self, name: str) -> PlanConfig:
        for p in self.plans:
            if p.name == name:
                return p
        raise ConfigError(f"no plan named {name!r}; plans: {', '.join(p.name for p in self.plans)}")

    @property
    def hash(self) -> str:
        """sha256 (16 hex digits) of what decides the trained models: seed, dataset, model,
        recipe and plans. Execution (``resources``) and later stages (``fit``, ``evaluate``)
        are left out, so changing them never orphans trained models."""
        # exclude_defaults: a field added later with a default keeps old runs' hashes valid
        payload = self.model_dump(mode="json", include=set(HASHED_SECTIONS), exclude_defaults=True)
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        body = self.model_dump(mode="json")
        return yaml.safe_dump({"config_hash": self.hash, **body}, sort_keys=False)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if keys[0] not in tree and len(keys) > 1:
        # Overriding inside a section the file left out starts from that section's defaults.
        default = Config().model_dump(mode="json").get(keys[0])
        if isinstance(default, dict | list):
            tree[keys[0]] = default
    node: Any = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = _plan_node(node, key, ".".join(keys[: i + 1]))
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[:i])}' is not a section")
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        node = nxt
    last = keys[-1]
    if isinstance(node, list):
        raise ConfigError(
            f"--set {dotted}: name a field inside the list item, e.g. plans.train.count=500"
        )
    node[last] = value


def _plan_node(items: list, key: str, where: str) -> dict:
    """``plans.train.count`` addresses the plan named ``train`` (or index ``0``)."""
    for item in items:
        if isinstance(item, dict) and item.get("name") == key:
            return item
    if key.isdigit() and int(key) < len(items):
        return items[int(key)]
    names = ", ".join(str(i.get("name")) for i in items if isinstance(i, dict))
    raise ConfigError(f"--set {where}: no list item named {key!r} (have: {names})")


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    kind, msg = first["type"], first["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        section = _section_for(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown config key '{loc}'" + (f"; allowed here: {allowed}" if allowed else "")
    if kind == "literal_error":
        return f"invalid value for '{loc}': {msg}"
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"invalid value for '{loc}': {msg}{shown}" if loc else f"invalid config: {msg}"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = getattr(ann, "__args__", (ann,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def config_from_dict(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    tree = json.loads(json.dumps(tree))  # deep copy, YAML scalars only
    tree.pop("config_hash", None)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(
    path: str | Path | dict[str, Any] | Config, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Read a YAML config (or take a dict of sections, or a ``Config``), apply ``--set``
    overrides (``"train.epochs=5"``), validate."""
    if isinstance(path, Config):
        return config_from_dict(path.model_dump(mode="json"), overrides)
    if isinstance(path, dict):
        return config_from_dict(path, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return config_from_dict(tree, overrides)


def config_from_yaml_text(text: str) -> Config:
    return config_from_dict(yaml.safe_load(text) or {})
