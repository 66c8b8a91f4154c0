"""The run configuration: one typed, validated schema loaded from YAML, with dotted overrides.

``load_config(path, overrides)`` is the only entry point: it reads YAML, applies
``--set a.b=c`` overrides, validates (unknown keys and bad values raise ``ConfigError`` with a
one-line message naming the field and what is allowed) and returns a frozen ``Config``.

``Config.hash`` covers what decides the trained models (seed, data, model, recipe, plans);
``resources`` (how they are computed: CPUs, GPUs, models per task, loader path) and the
settings of later stages are excluded, so a run can be resumed on a different cluster and
refitted with other settings.

The modules, by section:

* `base`       the closed, frozen section base class; import-path checks;
* `sections`   ``dataset``, ``model``, ``train``; the architecture checks
                (`check_model_fields`, `check_architecture`);
* `plans`      ``plans`` (`PlanConfig`); the plan-kind checks (`check_plan_fields`,
                `check_plan_kinds`);
* `stages`     ``resources``, ``fit``, ``estimate``, ``checkpoints``, ``evaluate``,
                ``sparse_layer``;
* `gradients`  ``gradients``;  `transfer`: ``transfer``;
* `root`       `Config`: the sections together, the cross-section checks, the hash;
* `load`       YAML, ``--set`` overrides and one-line error messages;
* `trust`      whether the code a run's ``config.yaml`` names may be imported
                (`check_trusted`, `remember`).

Checks that need the estimator registry (a method that needs checkpoints, a removal plan
naming a method that will not run) are made above this layer, in ``stages/preflight.py``.

This layer imports nothing of the package but `datamodels.errors`.
"""

from datamodels.config.base import IMPORT_PATH, Section
from datamodels.config.gradients import GradientsConfig
from datamodels.config.load import (
    config_from_dict,
    config_from_yaml_text,
    load_config,
    parse_override,
)
from datamodels.config.plans import (
    PlanConfig,
    check_plan_fields,
    check_plan_kinds,
)
from datamodels.config.root import HASHED_SECTIONS, Config
from datamodels.config.sections import (
    DatasetConfig,
    ModelConfig,
    TrainConfig,
    check_architecture,
    check_model_fields,
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

__all__ = [
    "HASHED_SECTIONS",
    "IMPORT_PATH",
    "CheckpointsConfig",
    "Config",
    "DatasetConfig",
    "EstimateConfig",
    "EvaluateConfig",
    "FitConfig",
    "GradientsConfig",
    "ModelConfig",
    "PlanConfig",
    "ResourcesConfig",
    "Section",
    "SparseLayerConfig",
    "TrainConfig",
    "TransferConfig",
    "check_architecture",
    "check_model_fields",
    "check_plan_fields",
    "check_plan_kinds",
    "config_from_dict",
    "config_from_yaml_text",
    "load_config",
    "parse_override",
]
