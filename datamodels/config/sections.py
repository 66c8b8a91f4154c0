"""The sections that decide what is trained (all hashed): ``dataset``, ``model`` and ``train``;
and the checks each architecture makes, of the ``model`` fields (`check_model_fields`) and of
the rest of the config (`check_architecture`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from datamodels.config.base import (
    IMPORT_PATH,
    Section,
    check_name,
    import_path,
    name_from_factory,
)
from datamodels.models import ARCHITECTURES, architecture

if TYPE_CHECKING:
    from datamodels.config.root import Config


class DatasetConfig(Section):
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
        return name_from_factory(values, "name", "custom")

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, factory: str | None) -> str | None:
        return import_path(factory, "dataset.factory")

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


class ModelConfig(Section):
    """The network. ``fastnet`` is the airbench-style CIFAR network trained K models per pass
    as one grouped network (``datamodels.trainers.grouped``); ``width`` is its first block's width
    (the later blocks are 4x). ``null`` trains nothing: deterministic pseudo-margins at no cost,
    for exercising the driver and store at scale. ``custom``: the ``nn.Module`` (inputs to
    logits) that ``factory`` (``"package.module:make_model"``) returns, called with ``kwargs``
    plus ``num_classes`` and ``input_shape`` when it takes them and ``kwargs`` does not give
    them; a config that gives ``factory`` may leave ``arch`` out. ``activation`` (``mlp``):
    the hidden layers' φ, ``relu`` (default), ``softplus`` (sharpness ``softplus_beta``) or
    ``gelu`` (``datamodels.models.activations``); a smooth φ makes the trained margins smooth
    in the example weights (the metagradient's single-model LDS,
    docs/applications/metagradients.md)."""

    arch: str = "mlp"  # a name of datamodels.models.ARCHITECTURES
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
        return name_from_factory(values, "arch", "custom")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return check_name(arch, ARCHITECTURES)

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, factory: str | None) -> str | None:
        return import_path(factory, "model.factory")

    @model_validator(mode="after")
    def _arch_fields(self) -> ModelConfig:
        check_model_fields(self)
        return self


class TrainConfig(Section):
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
        return import_path(recipe, "train.recipe")

    @field_validator("output")
    @classmethod
    def _output_kind(cls, output: str) -> str:
        if output not in ("margin", "loss") and not re.match(IMPORT_PATH, output):
            raise ValueError(
                "train.output must be margin, loss or a function 'package.module:name' "
                "taking (logits, labels)"
            )
        return output


def check_model_fields(model: ModelConfig) -> None:
    """The ``model`` fields each architecture needs or refuses: ``custom`` needs a
    ``factory`` (and a ``factory`` means ``custom``); ``activation`` applies to ``mlp`` only.
    Raises ValueError naming the field."""
    if architecture(model.arch).user_code and not model.factory:
        raise ValueError(
            "model.factory is required for model.arch='custom' "
            "(e.g. factory: mypackage.models:make_cnn)"
        )
    if model.factory and not architecture(model.arch).user_code:
        raise ValueError(
            f"model.factory builds the network itself: leave model.arch out (or set it to "
            f"custom), not {model.arch!r}"
        )
    if model.activation != "relu" and not architecture(model.arch).accepts_activation:
        raise ValueError(
            f"model.activation={model.activation!r} applies to model.arch: mlp only; "
            f"leave it out for arch {model.arch!r}"
        )


def check_architecture(config: Config) -> None:
    """What the rest of the config asks of ``model.arch``: a transfer run keeps the body of a
    network (not ``logreg`` nor ``null``), and ``transfer.recipe: finetune`` trains ``mlp``
    only. (``single_model`` plans need ``mlp`` too: `check_plan_kinds`.) Raises ValueError
    naming the fields."""
    if config.transfer is None:
        return
    if not architecture(config.model.arch).transfers:
        raise ValueError(
            "transfer runs pre-train a network whose body is kept (model.arch mlp, "
            "resnet9, fastnet or a model.factory module); this config has "
            f"model.arch={config.model.arch!r}"
        )
    if config.transfer.recipe == "finetune" and not architecture(config.model.arch).finetunes:
        raise ValueError(
            f"transfer.recipe finetune trains mlp models only; model.arch="
            f"{config.model.arch!r} transfers with transfer.recipe: linear_probe"
        )
