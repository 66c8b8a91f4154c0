"""The plan-kind registry: lookup, the one-line error for an unknown kind, what each kind
declares, and a worked example of adding a kind."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from datamodels.config import config_from_dict
from datamodels.errors import ConfigError
from datamodels.plans import (
    PLAN_KINDS,
    STORED_KINDS,
    PlanKind,
    masks_for,
    plan_kind,
    plan_models,
    training_seeds,
)
from datamodels.plans.alpha import Alpha


def test_every_kind_is_found_by_its_name():
    for name, cls in PLAN_KINDS.items():
        kind = plan_kind(name)
        assert isinstance(kind, cls) and kind.name == name


def test_unknown_kind_is_one_line_naming_the_field_and_the_choices():
    with pytest.raises(ConfigError) as err:
        plan_kind("every_other")
    message = str(err.value)
    assert "\n" not in message
    assert "plans[].kind" in message and "'every_other'" in message
    assert all(name in message for name in PLAN_KINDS)


def test_kinds_declare_what_the_dispatch_sites_ask():
    assert STORED_KINDS == ("stored", "removal")
    assert [n for n, k in PLAN_KINDS.items() if k.walks] == ["tmc"]
    assert [n for n, k in PLAN_KINDS.items() if k.example_weights] == ["paired_loo", "single_model"]
    assert [n for n, k in PLAN_KINDS.items() if k.needs_transfer] == ["classes"]
    assert [n for n, k in PLAN_KINDS.items() if k.one_per_config] == ["removal"]
    checkpointable = [n for n in PLAN_KINDS if plan_kind(n).supports_checkpoints]
    assert checkpointable == ["alpha", "alpha_grid", "loo", "paired_loo", "single_model", "classes"]
    in_transfer = [n for n, k in PLAN_KINDS.items() if k.in_transfer]
    assert in_transfer == ["alpha", "alpha_grid", "stored", "classes"]


def test_validate_names_the_field():
    plan = SimpleNamespace(name="p", kind="single_model", drops=(0.0,), count=2)
    with pytest.raises(ValueError, match=r"plans\.p\.drops"):
        plan_kind("single_model").validate(plan)
    plan = SimpleNamespace(name="q", kind="alpha", count=None)
    with pytest.raises(ValueError, match=r"plans\.q\.count is required"):
        plan_kind("alpha").validate(plan)
    plan_kind("loo").validate(SimpleNamespace(name="l", kind="loo", points=None, count=None))


def test_a_stored_kind_without_its_table_names_the_table_and_what_writes_it():
    config = config_from_dict({"plans": [{"name": "r", "kind": "removal", "count": 1}]})
    planned = plan_models(config, 10)
    with pytest.raises(Exception, match=r"plan_masks/r\.parquet.*datamodels removal RUN"):
        masks_for(config, planned.take(np.arange(1)), 10)


# -- a worked example: adding a plan kind ------------------------------------------------------
# A new kind is one module with a `PlanKind` subclass and one line in `PLAN_KINDS`. Here the
# kind lives in the test and the map is a test-local copy, passed as ``kinds``.


class EveryOther(PlanKind):
    """``every_other``: two masks, the even train positions and the odd ones; each replicate
    trains both halves with the same seed (so the halves differ only in their data)."""

    name = "every_other"
    requires_count = False

    def n_masks(self, plan, n_train: int) -> int:
        return 2

    def alphas(self, config_seed: int, plan, mask_index: np.ndarray, n_train: int) -> np.ndarray:
        evens = (n_train + 1) // 2
        return np.where(np.asarray(mask_index) == 0, evens, n_train - evens) / max(n_train, 1)

    def mask(self, config_seed: int, plan, mask_index: int, n_train: int, rows=None) -> np.ndarray:
        return np.arange(n_train) % 2 == mask_index

    def seeds(self, config_seed: int, plan, mask_index: np.ndarray, replicate: np.ndarray):
        return training_seeds(config_seed, plan.name, np.zeros_like(mask_index), replicate)


def test_worked_example_a_new_kind_draws_its_masks_and_seeds():
    kinds = {**PLAN_KINDS, "every_other": EveryOther}
    # any object with the plan fields will do: the plans package reads them by name
    config = SimpleNamespace(
        seed=3,
        plans=[
            SimpleNamespace(name="base", kind="alpha", alpha=0.5, count=2, seeds=1),
            SimpleNamespace(name="halves", kind="every_other", seeds=2),
        ],
    )
    planned = plan_models(config, 5, kinds=kinds)
    assert planned.model_id.tolist() == [0, 1, 2, 3, 4, 5]  # 2 alpha, then 2 masks x 2 seeds
    halves = planned.take(np.flatnonzero(planned.plan == "halves"))
    assert halves.mask_index.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(halves.alpha, [0.6, 0.6, 0.4, 0.4])
    # one seed per replicate, shared by both halves
    assert halves.seed[0] == halves.seed[2] and halves.seed[1] == halves.seed[3]
    assert halves.seed[0] != halves.seed[1]
    masks = masks_for(config, halves, 5, kinds=kinds)
    assert masks.astype(int).tolist() == [[1, 0, 1, 0, 1]] * 2 + [[0, 1, 0, 1, 0]] * 2
    # the kinds already there draw exactly as they do without the new one
    base = planned.take(np.flatnonzero(planned.plan == "base"))
    alone = SimpleNamespace(seed=3, plans=[config.plans[0]])
    with_new = masks_for(config, base, 5, kinds=kinds)
    np.testing.assert_array_equal(with_new, masks_for(alone, base, 5))
    assert Alpha().alphas(3, config.plans[0], np.arange(2), 5).tolist() == [0.5, 0.5]
    # the global map is untouched: the config layer still names the known kinds only
    with pytest.raises(ConfigError, match="every_other"):
        plan_models(config, 5)
