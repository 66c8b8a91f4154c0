"""The plan-kind and architecture checks, each one named function: what they refuse, and that
`Config` validation goes through them (one line naming the fields)."""

from pathlib import Path

import pytest

from datamodels.config import (
    Config,
    ModelConfig,
    PlanConfig,
    check_architecture,
    check_model_fields,
    check_plan_fields,
    check_plan_kinds,
    config_from_dict,
    load_config,
)
from datamodels.errors import ConfigError

DIGITS = Path(__file__).parents[2] / "configs" / "digits.yaml"


def test_plans_of_kind_keeps_the_config_order():
    config = load_config(DIGITS)
    assert [p.name for p in config.plans_of_kind("alpha")] == ["train", "eval"]
    kinds = config.plans_of_kind("removal", "paired_loo")
    assert [p.kind for p in kinds] == ["paired_loo", "removal"]
    assert config.plans_of_kind("tmc") == ()


def test_check_plan_fields_names_the_plan_and_field():
    plan = PlanConfig.model_construct(name="walks", kind="tmc", count=None)
    with pytest.raises(ValueError, match=r"plans\.walks\.count is required for kind 'tmc'"):
        check_plan_fields(plan)
    check_plan_fields(PlanConfig(name="every", kind="loo"))  # loo needs no count


def test_check_plan_kinds_runs_on_a_whole_config():
    config = Config().model_copy(
        update={"plans": (PlanConfig(name="a", kind="single_model", count=2),),
                "model": ModelConfig(arch="logreg")})
    with pytest.raises(ValueError, match="single_model plans .* batched mlp trainer only"):
        check_plan_kinds(config)
    with pytest.raises(ConfigError, match="single_model plans"):  # validation calls it
        config_from_dict({"model": {"arch": "logreg"},
                          "plans": [{"name": "a", "kind": "single_model", "count": 2}]})


def test_check_model_fields_and_check_architecture():
    with pytest.raises(ValueError, match="model.factory is required for model.arch='custom'"):
        check_model_fields(ModelConfig.model_construct(arch="custom", factory=None,
                                                       activation="relu"))
    tree = {"model": {"arch": "logreg"}, "transfer": {"source": {"name": "digits"}},
            "plans": [{"name": "train", "kind": "classes", "count": 4}]}
    with pytest.raises(ConfigError, match="transfer runs pre-train a network"):
        config_from_dict(tree)
    tree["model"] = {"arch": "mlp"}
    check_architecture(config_from_dict(tree))  # an mlp transfers
