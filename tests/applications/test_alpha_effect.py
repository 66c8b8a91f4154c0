"""The effect of subset size α and LDS against the number of models
(`datamodels.applications.alpha_effect`): known answers on generated linear data (margins =
masks · w + noise), held-out-only LDS per level, and the tables a small run writes."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import datamodels as dm
from datamodels.applications.alpha_effect import (
    Level,
    alpha_effect,
    alpha_effect_summary,
    lds_curve,
)
from datamodels.config import FitConfig
from datamodels.errors import DatamodelsError
from datamodels.metrics.lds import lds
from datamodels.regress.lasso import split_rows
from datamodels.store import query
from datamodels.store.schemas import ALPHA_EFFECT_SCHEMA, LDS_CURVE_SCHEMA
from tests.report.test_report import report_run  # noqa: F401 - the session fixture, built once

# the module (the package re-exports a function under the same name)
module = importlib.import_module("datamodels.applications.alpha_effect")
N_TRAIN, N_TARGETS = 40, 4
FIT = FitConfig(n_lambdas=12, eps=1e-2, device="cpu")


def _truth(seed: int = 0) -> np.ndarray:
    """float[n_train, T]: sparse true weights, 6 non-zeros per target."""
    rng = np.random.default_rng(seed)
    w = np.zeros((N_TRAIN, N_TARGETS))
    for t in range(N_TARGETS):
        w[rng.choice(N_TRAIN, 6, replace=False), t] = rng.normal(0, 1, 6)
    return w


def _models(w: np.ndarray, m: int, alpha: float, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    masks = rng.random((m, N_TRAIN)) < alpha
    return masks, masks @ w + rng.normal(0, noise, (m, N_TARGETS))


def test_lds_curve_rises_with_models_to_the_true_weights_lds():
    """On margins = M·w + noise the curve rises with m and ends near the LDS of w itself
    (the best any linear datamodel can do on those noisy held-out margins)."""
    w = _truth()
    masks, margins = _models(w, 1200, 0.5, noise=1.0, seed=1)
    eval_masks, eval_margins = _models(w, 300, 0.5, noise=1.0, seed=2)
    curve = lds_curve(masks, margins, eval_masks, eval_margins, FIT, counts=(30, 100, 300))
    assert curve["n_models"].tolist() == [30, 100, 300, 1200]  # ends at every model
    values = curve["lds"].to_numpy()
    assert np.all(np.diff(values) > -0.01) and values[-1] - values[0] > 0.1
    best = lds(w.T, eval_masks, eval_margins).value
    assert values[-1] == pytest.approx(best, abs=0.03) and values[0] < best - 0.1
    assert (curve["n_targets"] == N_TARGETS).all() and (curve["stderr"] > 0).all()


def test_lds_curve_refuses_too_few_models():
    w = _truth()
    masks, margins = _models(w, 10, 0.5, noise=0.1, seed=1)
    with pytest.raises(DatamodelsError, match="at least 22"):
        lds_curve(masks, margins, masks, margins, FIT)


def test_alpha_effect_table_shape_and_reference_level():
    w = _truth()
    levels = [
        Level("grid", a, *_models(w, 90 + 10 * i, a, noise=0.3, seed=i))
        for i, a in enumerate((0.9, 0.2, 0.5))
    ]
    eval_set = _models(w, 40, 0.5, noise=0.3, seed=9)
    targets = np.array([3, 0, 2], dtype=np.int64)  # any columns, any order
    frame = alpha_effect(levels, targets, FIT, eval_set, k=5, holdout=0.25)
    assert list(frame.columns) == ALPHA_EFFECT_SCHEMA.names
    assert len(frame) == 3 * len(targets)
    assert frame["alpha"].tolist() == [0.2] * 3 + [0.5] * 3 + [0.9] * 3  # sorted by α
    assert frame["target"].tolist() == targets.tolist() * 3
    # every level uses the smallest level's 90 models: 68 fitted, 22 held out
    assert set(frame["n_models"]) == {68} and set(frame["n_heldout"]) == {22}
    reference = frame[frame["alpha"] == 0.9]  # the default reference: the largest α
    assert (frame["reference"] == "alpha=0.9").all()
    assert (reference["top_overlap"] == 1).all() and (reference["weight_correlation"] == 1).all()
    assert all(len(top) <= 5 for top in frame["top_helpful"])
    # on noise 0.3 every level recovers the true top helpful examples well
    assert (frame["lds_eval"] > 0.5).all() and frame["top_overlap"].mean() > 0.6
    summary = alpha_effect_summary(frame)
    assert summary["alpha"].tolist() == [0.2, 0.5, 0.9] and (summary["n_targets"] == 3).all()
    # against the true weights: top-k overlap is exact where a level recovers them
    truth = alpha_effect(levels, targets, FIT, k=3, reference=("truth", w[:, targets].T))
    assert (truth["reference"] == "truth").all() and truth["lds_eval"].isna().all()
    middle = truth[truth["alpha"] == 0.5]
    assert middle["top_overlap"].mean() > 0.6 and (middle["weight_correlation"] > 0.9).all()


def test_alpha_effect_lds_uses_held_out_models_only(monkeypatch):
    """The level's held-out rows (``split_rows(m, holdout, seed)[1]``) get pure-noise margins:
    a datamodel scored on them has LDS near 0, and the fit never sees them."""
    w, m, holdout = _truth(), 200, 0.25
    fitted_rows, held_rows = split_rows(m, holdout, 0)
    levels = []
    for i, a in enumerate((0.3, 0.7)):
        masks, margins = _models(w, m, a, noise=0.2, seed=i)
        margins[held_rows] = np.random.default_rng(10 + i).normal(0, 5, (len(held_rows), 4))
        levels.append(Level("grid", a, masks, margins))
    seen = []
    real = module.fit_datamodels

    def spy(masks, margins, fit):
        seen.append(masks.copy())
        return real(masks, margins, fit)

    monkeypatch.setattr(module, "fit_datamodels", spy)
    eval_set = _models(w, 60, 0.5, noise=0.2, seed=7)
    frame = alpha_effect(levels, np.arange(4), FIT, eval_set, k=5, holdout=holdout)
    for level, masks in zip(levels, seen, strict=True):
        np.testing.assert_array_equal(masks, level.masks[fitted_rows])
    assert abs(frame["lds_level"].mean()) < 0.15  # scored on the noise rows only
    assert (frame["lds_eval"] > 0.8).all()  # the datamodels themselves are good


def test_alpha_effect_refuses_levels_too_small():
    w = _truth()
    levels = [
        Level("a", 0.5, *_models(w, 20, 0.5, 0.1, 0)),
        Level("b", 0.2, *_models(w, 20, 0.2, 0.1, 1)),
    ]
    with pytest.raises(DatamodelsError, match="plans.<name>.count"):
        alpha_effect(levels, np.arange(2), FIT)


def test_alpha_effect_and_lds_curve_on_a_run(report_run, tmp_path):  # noqa: F811
    """The report's small run (an alpha_grid plan of 3 levels beside the α = ½ train plan)
    holds both tables (written by the API) with their schemas; the curve's last point is the
    fit stage's own datamodels LDS (same models, same regression, same targets)."""
    run = dm.Run(report_run)
    table = run.read_table("applications/alpha_effect.parquet", ALPHA_EFFECT_SCHEMA).to_pandas()
    n_test = int((run.examples()["split"] == "test").sum())
    levels = table.groupby(["plan", "alpha"], sort=False).size()
    assert levels.index.get_level_values("plan").tolist() == ["grid", "grid", "train", "grid"]
    assert levels.tolist() == [n_test] * 4 and set(table["n_models"]) == {24}
    assert set(table["n_heldout"]) == {6} and set(table["k"]) == {5}
    assert (table["reference"] == "datamodels").all()  # the run's own fit is the reference
    overlap = table["top_overlap"].dropna()
    assert len(overlap) and ((overlap >= 0) & (overlap <= 1)).all()
    curve = run.read_table("applications/lds_curve.parquet", LDS_CURVE_SCHEMA).to_pandas()
    assert curve["n_models"].tolist() == [22, 25, 30] and (curve["plan"] == "eval").all()
    evaluation = run.evaluation().set_index(["method", "metric"])
    assert curve["lds"].iloc[-1] == pytest.approx(evaluation.loc[("datamodels", "lds"), "value"])
    sql = (
        "SELECT count(DISTINCT alpha) AS a, (SELECT count(*) FROM lds_curve) AS c FROM alpha_effect"
    )
    assert query(run, sql).values.tolist() == [[3, 3]]  # both tables are SQL views


def test_commands_write_the_tables_and_refuse_clearly(report_run, tmp_path):  # noqa: F811
    import shutil

    from typer.testing import CliRunner

    from datamodels.cli import app

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    (copy / "applications" / "lds_curve.parquet").unlink()
    result = CliRunner().invoke(app, ["lds-curve", str(copy), "--counts", "5,1000"])
    assert result.exit_code == 0, result.output
    curve = dm.Run(str(copy)).read_table("applications/lds_curve.parquet", LDS_CURVE_SCHEMA)
    assert curve.column("n_models").to_pylist() == [30]  # 5 is too few to fit, 1000 too many
    bad = CliRunner().invoke(app, ["lds-curve", str(copy), "--counts", "a,b"])
    assert bad.exit_code == 2 and "--counts" in bad.output
    small = CliRunner().invoke(app, ["alpha-effect", str(copy), "--holdout", "0.5"])
    assert small.exit_code == 2 and "plans.<name>.count" in small.output


def test_the_tables_are_stages_current_until_their_inputs_change(report_run, tmp_path):  # noqa: F811
    """A second call with the same settings writes nothing; new settings recompute; the
    stages' states say which."""
    import shutil

    from datamodels import api

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    table = copy / "applications" / "alpha_effect.parquet"
    written = table.stat().st_mtime_ns
    api.alpha_effect(str(copy), k=5)  # the fixture's settings: current, nothing redone
    assert table.stat().st_mtime_ns == written
    states = api.stage_states(str(copy)).set_index("stage")["state"]
    assert states["alpha_effect"] == "done" and states["lds_curve"] == "done"
    curve = api.lds_curve(str(copy), (25,))  # other counts: recomputed
    assert curve["n_models"].tolist() == [25, 30]
    assert api.stage_states(str(copy)).set_index("stage")["state"]["lds_curve"] == "done"


def test_a_bumped_version_makes_only_the_stages_it_feeds_stale_and_recomputes(
    report_run, tmp_path, monkeypatch  # noqa: F811
):
    """Each derived table records its producers' code versions, in its stage's marker and in
    its own Parquet metadata; bumping one producer makes only the stages it feeds stale (and
    names the change), and the next run of such a stage recomputes it."""
    import shutil

    from datamodels import api
    from datamodels.metrics import mislabel

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    run = dm.Run(str(copy))
    curve_versions = {"application.lds_curve": 1, "fit.datamodels": 1, "metric.lds": 1}
    assert run.table_versions("applications/lds_curve.parquet") == curve_versions
    assert run.table_versions("applications/alpha_effect.parquet") == {
        "application.alpha_effect": 1, "fit.datamodels": 1, "metric.lds": 1}
    metrics = {"metric.lds": 1, "metric.loo": 1, "metric.mislabel": 1, "metric.removal": 1}
    assert run.table_versions("evaluation.parquet") == metrics
    assert run.table_versions("removals/results.parquet") == {"application.removal": 1}
    assert run.table_versions("removals/sets.parquet") == {"application.removal": 1}
    assert run.table_versions("scores/datamodels.parquet") == {"fit.datamodels": 1}
    assert run.table_versions("datamodels/weights.parquet") == {"fit.datamodels": 1}
    assert run.table_versions("self_scores/downsampling.parquet") == {"method.downsampling": 1}
    assert json.loads((copy / "_stages" / "lds_curve.json").read_text())["versions"] == (
        curve_versions)
    states = api.stage_states(str(copy)).set_index("stage")
    assert set(states["state"]) - {"-"} == {"done"} and set(states["changed"]) == {""}

    monkeypatch.setattr(module, "LDS_CURVE_VERSION", 2)
    states = api.stage_states(str(copy)).set_index("stage")
    assert states.loc["lds_curve", ["state", "changed"]].tolist() == [
        "stale", "application.lds_curve 1 -> 2"]
    others = states.drop("lds_curve")
    assert set(others["state"]) - {"-"} == {"done"} and set(others["changed"]) == {""}
    monkeypatch.setattr(module, "LDS_CURVE_VERSION", 1)

    # a metric only evaluate computes: evaluate alone turns stale, and is recomputed
    monkeypatch.setattr(mislabel, "VERSION", 3)
    states = api.stage_states(str(copy)).set_index("stage")
    assert states.loc["evaluate", ["state", "changed"]].tolist() == [
        "stale", "metric.mislabel 1 -> 3"]
    assert set(states.drop("evaluate")["state"]) - {"-"} == {"done"}
    evaluation = copy / "evaluation.parquet"
    before = evaluation.stat().st_mtime_ns
    dm.evaluate(str(copy))
    assert evaluation.stat().st_mtime_ns > before
    assert run.table_versions("evaluation.parquet") == metrics | {"metric.mislabel": 3}
    assert api.stage_states(str(copy)).set_index("stage").loc["evaluate", "state"] == "done"

    # a table written before tables recorded versions (no such key) reads as before
    results = copy / "removals" / "results.parquet"
    old = pq.read_table(results)
    metadata = {k: v for k, v in old.schema.metadata.items() if k != b"datamodels.versions"}
    pq.write_table(old.replace_schema_metadata(metadata), results)
    assert run.table_versions("removals/results.parquet") == {}
    assert run.removal_results().equals(dm.Run(report_run).removal_results())


@pytest.mark.slow
def test_a_bumped_lds_curve_is_recomputed_and_alpha_effect_is_not(
    report_run, tmp_path, monkeypatch  # noqa: F811
):
    import shutil

    from datamodels import api

    copy = tmp_path / "run"
    shutil.copytree(report_run, copy)
    run = dm.Run(str(copy))
    monkeypatch.setattr(module, "LDS_CURVE_VERSION", 2)
    table = copy / "applications" / "lds_curve.parquet"
    alpha = copy / "applications" / "alpha_effect.parquet"
    before, alpha_before = table.stat().st_mtime_ns, alpha.stat().st_mtime_ns
    api.lds_curve(str(copy), (22, 25))  # the settings it ran with: recomputed for the version
    assert table.stat().st_mtime_ns > before
    assert run.table_versions("applications/lds_curve.parquet")["application.lds_curve"] == 2
    api.alpha_effect(str(copy), k=5)
    assert alpha.stat().st_mtime_ns == alpha_before  # current: not recomputed
    states = api.stage_states(str(copy)).set_index("stage")
    assert set(states["state"]) - {"-"} == {"done"} and set(states["changed"]) == {""}
