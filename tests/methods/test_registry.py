"""The estimator registry: every method declared once, looked up by name, and an unknown
name refused in one line (the registry, the Python API and the CLI)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from datamodels import api
from datamodels.cli import app
from datamodels.errors import EstimateError
from datamodels.methods import METHODS, GradientMethod, RetrainingMethod, method, names
from datamodels.methods.base import PER_MODEL, SOURCES
from datamodels.stages.estimate import GRADIENT_METHODS
from datamodels.stages.estimate import METHODS as RETRAINING


def test_every_method_is_declared_under_its_own_name():
    assert tuple(METHODS) == api.methods()  # the same names, in the same order
    for name, cls in METHODS.items():
        assert cls.name == name
        assert cls.source in SOURCES
        assert set(cls.writes) <= {"scores", "self_scores"} and cls.writes
        per_model = cls.source in PER_MODEL
        assert issubclass(cls, GradientMethod if per_model else RetrainingMethod), name
    assert RETRAINING + GRADIENT_METHODS == tuple(METHODS)
    assert names(per_model=True) == GRADIENT_METHODS
    # what each declares, as the stage reads it
    assert METHODS["shapley"].plan_kinds == ("alpha_grid",)
    assert METHODS["downsampling"].plan_kinds == ()  # estimate.plan
    assert METHODS["knn_shapley"].source == "features"
    assert METHODS["memorization"].writes == ("self_scores",)
    assert METHODS["influence"].hessian and not METHODS["tracin"].hessian
    assert METHODS["tracin"].every_checkpoint and METHODS["trak"].reweights
    assert {n for n, c in METHODS.items() if c.on_request} == {"metagradient", "hydra", "ekfac"}
    assert METHODS["metagradient"].source == "replay"


def test_lookup_returns_the_class():
    assert method("loo") is METHODS["loo"]
    assert method("trak").name == "trak"


def test_unknown_method_is_one_line_naming_the_known_ones():
    with pytest.raises(EstimateError) as caught:
        method("shapely")
    message = str(caught.value)
    assert "\n" not in message and "'shapely'" in message
    assert message.endswith(", ".join(METHODS))


def test_unknown_method_through_the_api_and_the_cli(tiny_run):
    config, uri = tiny_run
    with pytest.raises(EstimateError) as caught:
        api.estimate(uri, "shapely")
    message = str(caught.value)
    assert "\n" not in message and "'shapely'" in message
    assert all(name in message for name in METHODS)
    result = CliRunner().invoke(app, ["estimate", uri, "-m", "shapely"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "'shapely'" in lines[0] and "influence" in lines[0]
