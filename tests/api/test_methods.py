"""Which estimators ``estimate_many`` (and so ``run``) computes: ``--methods`` /
``estimate.methods``, and the default that leaves out exact influence when its Hessian
would take more than a few minutes (measured coefficients in ``api.analysis``)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import datamodels as dm
from datamodels import api
from datamodels.api import analysis
from datamodels.errors import EstimateError
from tests.conftest import SMALL_DIGITS

TINY = {
    **SMALL_DIGITS,
    "dataset": {"name": "digits", "limit_train": 300, "limit_test": 60},  # a part of digits
    "train": {"epochs": 2, "batch_size": 32},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 12},
        {"name": "eval", "alpha": 0.5, "count": 4},
    ],
    "checkpoints": {"plan": "train", "models": 1},
    "fit": {"n_lambdas": 4},
}


def test_exact_hessian_seconds_follow_the_measurements():
    # the digits MLP of configs/digits.yaml (P = 4,810 over ~719 points): well under budget
    assert analysis.exact_hessian_seconds("mlp", 4810, 719) < 60
    # a user's 9,098-parameter conv net over 2,000 digits: hours, above the budget
    conv = analysis.exact_hessian_seconds("module", 9098, 2000)
    assert conv > 3600 and conv > analysis.EXACT_HESSIAN_BUDGET_S
    assert analysis.exact_hessian_seconds("mlp", 4810, 719, models=3) == pytest.approx(
        3 * analysis.exact_hessian_seconds("mlp", 4810, 719)
    )


def test_estimate_methods_is_not_hashed():
    plain = dm.load_config(TINY)
    chosen = dm.load_config(TINY, ["estimate.methods=[trak,loo]"])
    assert chosen.estimate.methods == ("trak", "loo")
    assert plain.hash == chosen.hash


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from datamodels.orchestrate.executor import SerialExecutor

    config = dm.load_config(TINY)
    out = str(tmp_path_factory.mktemp("methods") / "run")
    dm.train(config, out, executor=SerialExecutor(), show_progress=False)
    return config, out


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=400), text


def test_default_leaves_out_exact_influence_over_budget(trained, monkeypatch):
    from datamodels.orchestrate.executor import SerialExecutor

    config, out = trained
    assert analysis.too_costly(config, dm.Run(out), "influence") is None  # a small MLP
    assert analysis.too_costly(config, dm.Run(out), "trak") is None  # no Hessian
    cg = dm.load_config(TINY, ["gradients.solver=cg"])
    monkeypatch.setattr(analysis, "EXACT_HESSIAN_BUDGET_S", 0.0)
    assert analysis.too_costly(cg, dm.Run(out), "influence") is None  # no exact Hessian
    why = analysis.too_costly(config, dm.Run(out), "influence")
    assert why and "--methods" in why and "gradients.solver=cg" in why

    # the default skips it (one line) and computes the cheap ones; naming it runs it anyway
    monkeypatch.setattr(analysis, "methods", lambda: ("banzhaf", "influence"))
    console, text = _console()
    done = api.estimate_many(config, out, None, console=console, show_progress=False,
                             executor=SerialExecutor())
    assert set(done) == {"banzhaf"}
    lines = [line for line in text.getvalue().splitlines() if "skipped influence" in line]
    assert len(lines) == 1 and "--methods" in lines[0] and "solver=cg" in lines[0]
    done = api.estimate_many(config, out, ["influence"], console=console,
                             show_progress=False, executor=SerialExecutor())
    assert done["influence"]


def test_estimate_methods_chooses_and_unknown_names_are_one_line(trained):
    config, out = trained
    chosen = dm.load_config(TINY, ["estimate.methods=[memorization]"])
    console, _ = _console()
    done = api.estimate_many(chosen, out, None, console=console, show_progress=False)
    assert set(done) == {"memorization"}
    with pytest.raises(EstimateError, match=r"unknown method 'nope' \(--methods / estimate"):
        api.estimate_many(config, out, ["nope"], console=console)
