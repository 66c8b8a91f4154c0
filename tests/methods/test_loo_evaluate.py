"""LOO on a run: the paired estimator on a linear game with seed noise, and the evaluate
stage's ``loo_pearson`` / ``loo_spearman`` / split-half rows recomputed from the stored
tables with scipy, for a ``paired_loo`` plan and for a run of the older unpaired ``loo``
kind (still read, with the unpaired estimator); the report's LOO section shows them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from datamodels import estimators as est
from datamodels.api import estimate, evaluate, train
from datamodels.config import config_from_dict
from datamodels.estimators.loo import left_out_points, replicate_keys
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import plan_models
from datamodels.report.html import build_report
from datamodels.report.loo import loo_section
from datamodels.store import Run
from datamodels.store.positions import eval_positions

POINTS = [0, 3, 5, 8]


def test_paired_differences_cancel_seed_noise_on_a_linear_game():
    """Y_t = b_t + noise_r,t − Σ_{i left out} τ_it with noise shared by a replicate's models:
    the paired estimate is τ exactly; the unpaired one (noise per model) is not."""
    rng = np.random.default_rng(0)
    n, T, R = 6, 4, 5
    tau = rng.normal(size=(T, n))
    noise = 10 * rng.normal(size=(R, T))  # seed noise 10x the effects
    left_out = np.tile(np.arange(-1, n), R)
    replicate = np.repeat(np.arange(R), n + 1)
    margins = noise[replicate] - np.where(left_out[:, None] >= 0, tau.T[left_out], 0.0)
    scores = est.paired_loo(left_out, replicate, margins, n)
    np.testing.assert_allclose(scores.values, tau, atol=1e-5)
    assert np.all(scores.stderr < 1e-5)
    # noise drawn per model instead: the same formula does not cancel it
    shuffled = est.paired_loo(left_out, rng.permutation(replicate), margins, n)
    assert np.abs(shuffled.values - tau).max() > 1.0


def _tiny(kind: str) -> dict:
    return {
        "name": f"loo_{kind}",
        "dataset": {"name": "digits", "limit_train": 40, "limit_test": 12, "eval_train": True},
        "model": {"arch": "mlp", "hidden": 8},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.1},
        "plans": [
            {"name": "train", "alpha": 0.5, "count": 40},
            {"name": "eval", "alpha": 0.5, "count": 6},
            {"name": "loo", "kind": kind, "points": POINTS, "seeds": 4},
        ],
        "checkpoints": {"plan": None},
        "estimate": {"methods": ["downsampling", "loo"]},
        "resources": {"models_per_task": 200},
    }


@pytest.fixture(scope="module", params=["paired_loo", "loo"])
def evaluated(request, tmp_path_factory):
    config = config_from_dict(_tiny(request.param))
    uri = str(tmp_path_factory.mktemp(request.param) / "run")
    train(config, uri, executor=SerialExecutor(), show_progress=False)
    for method in ("downsampling", "loo"):
        estimate(config, uri, method, show_progress=False)
    return request.param, config, uri, evaluate(config, uri)


def test_loo_rows_equal_scipy_on_the_stored_tables(evaluated):
    kind, config, uri, table = evaluated
    run = Run(uri)
    ids = run.model_ids("loo")
    masks, margins = run.masks_and_margins(plan="loo")
    left_out = left_out_points(masks)
    mask_index = plan_models(config, run.n_train).select_ids(ids).mask_index
    keys = replicate_keys(ids, mask_index, 4)
    # the LOO effects: the loo method's own stored table (its estimator, its targets)
    loo_targets, loo_scores = run.scores("loo")
    targets, scores = run.scores("downsampling")
    assert np.array_equal(loo_targets, targets)
    truth, mine = loo_scores[:, POINTS].ravel(), scores[:, POINTS].ravel()
    rows = table.set_index(["method", "metric"])
    assert rows.loc[("downsampling", "loo_pearson"), "value"] == pytest.approx(
        stats.pearsonr(mine, truth)[0], abs=1e-5
    )
    assert rows.loc[("downsampling", "loo_spearman"), "value"] == pytest.approx(
        stats.spearmanr(mine, truth)[0], abs=1e-5
    )
    assert ("loo", "loo_pearson") not in rows.index  # LOO against itself says nothing
    # split-half: effects of replicates 0, 2 against 1, 3 on the test targets
    test = eval_positions(run, "test")
    per_rep = np.stack(
        [
            margins[(keys == k) & (left_out == -1)][0, test]
            - margins[(keys == k)][[list(left_out[keys == k]).index(p) for p in POINTS]][:, test]
            for k in np.unique(keys)
        ]
    )  # [R, P, T]
    a, b = per_rep[0::2].mean(0).ravel(), per_rep[1::2].mean(0).ravel()
    r = stats.pearsonr(a, b)[0]
    assert rows.loc[("loo", "loo_split_half"), "value"] == pytest.approx(r, abs=1e-5)
    assert rows.loc[("loo", "loo_split_half_sb"), "value"] == pytest.approx(
        2 * r / (1 + r) if r >= 0 else np.nan, abs=1e-5, nan_ok=True
    )
    details = json.loads(rows.loc[("loo", "loo_split_half"), "details"])
    assert details["paired"] == (kind == "paired_loo") and details["halves"] == [2, 2]
    assert details["n_pairs"] == len(POINTS) * len(test)
    # the paired kind's stored LOO table is the mean paired difference
    if kind == "paired_loo":
        np.testing.assert_allclose(loo_scores[:, POINTS], per_rep.mean(0).T, atol=1e-5)
    else:
        expected = est.loo(left_out, margins[:, test], run.n_train).values
        np.testing.assert_allclose(loo_scores, expected, atol=1e-6)


def test_report_loo_section_reads_the_evaluation_table(evaluated, tmp_path):
    kind, _, uri, table = evaluated
    page = build_report(uri, out=tmp_path / "report.html").read_text(encoding="utf-8")
    body = page.split('<section id="loo">')[1].split("</section>")[0]
    assert "split-half reliability" in body and "Spearman–Brown" in body
    assert ("paired (one seed" in body) == (kind == "paired_loo")
    r = table.set_index(["method", "metric"]).loc[("loo", "loo_split_half"), "value"]
    assert f"r = {r:.3f}" in body
    assert "downsampling" in body and "loo_pearson" in body


def test_report_loo_section_names_what_is_missing():
    """An evaluation written before the loo rows existed (an older run) is not misread: the
    section names the command that adds them."""
    older = pd.DataFrame(
        [{"method": "datamodels", "metric": "lds", "value": 0.5, "n_targets": 3, "details": "{}"}]
    )
    assert "no loo or paired_loo plan" in loo_section(older, False, "runs/x")
    assert "run evaluate" in loo_section(None, True, "runs/x")
    assert "`datamodels evaluate runs/x`" in loo_section(older, True, "runs/x")
