"""`Config`: the whole run configuration, its cross-section checks and its hash.

``Config.hash`` covers what decides the trained models (seed, data, model, recipe, plans);
``resources`` (how they are computed) and the settings of later stages are excluded, so a run
can be resumed on a different cluster and refitted with other settings.
"""

from __future__ import annotations

import hashlib
import json

import yaml
from pydantic import Field, field_validator, model_validator

from datamodels.config.base import Section
from datamodels.config.gradients import GradientsConfig
from datamodels.config.plans import PlanConfig, check_plan_kinds, default_plans
from datamodels.config.sections import (
    DatasetConfig,
    ModelConfig,
    TrainConfig,
    check_architecture,
)
from datamodels.config.stages import (
    CheckpointsConfig,
    EstimateConfig,
    EvaluateConfig,
    FitConfig,
    ResourcesConfig,
    SparseLayerConfig,
)
from datamodels.config.transfer import TransferConfig
from datamodels.errors import ConfigError

HASHED_SECTIONS = ("seed", "dataset", "model", "train", "plans", "transfer")


class Config(Section):
    name: str = "digits"
    seed: int = 0
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    plans: tuple[PlanConfig, ...] = Field(default_factory=default_plans)
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
        return self

    # the order of these checks decides which message a config with several mistakes gets
    @model_validator(mode="after")
    def _plan_kinds(self) -> Config:
        check_plan_kinds(self)
        return self

    @model_validator(mode="after")
    def _architecture(self) -> Config:
        check_architecture(self)
        return self

    @model_validator(mode="after")
    def _transfer_checkpoints(self) -> Config:
        if self.transfer is not None and self.checkpoints.plan is not None:
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

    def plans_of_kind(self, *kinds: str) -> tuple[PlanConfig, ...]:
        """The plans of any of ``kinds``, in the config's order."""
        return tuple(p for p in self.plans if p.kind in kinds)

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
