"""Counterfactual removal and brittleness by retraining: the sets are the top-k by score, a
stored-mask plan trains each model once and resumes, and on the convex ``logreg`` the
retrained effect of removing a set is the exact effect of training without it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import datamodels as dm
from datamodels.applications.brittleness import brittleness
from datamodels.applications.removal import removal_sets, top_helpful
from datamodels.config import PlanConfig, config_from_dict
from datamodels.errors import StoreError
from datamodels.metrics.removal import removal_metrics
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import n_masks, plan_models
from datamodels.stages.status import plan_status
from datamodels.store import Run, query, verify

WEIGHT_DECAY = 0.05
# logreg (exact, deterministic) on 120 digits; plan `full` is the full-data model (a loo plan
# without points): the influence functions' checkpoint and the reference margins
LOGREG = {
    "name": "removal_logreg",
    "dataset": {"name": "digits", "limit_train": 120, "limit_test": 12, "eval_train": False},
    "model": {"arch": "logreg"},
    "train": {"weight_decay": WEIGHT_DECAY, "tolerance": 1e-9, "max_iter": 5000},
    "plans": [
        {"name": "full", "kind": "loo", "points": []},
        {"name": "removal", "kind": "removal", "count": 4, "ks": [1, 4], "seeds": 2,
         "methods": ["influence"], "brittle_max": 0.05},
    ],
    "checkpoints": {"plan": "full"},
    "fit": {"plan": "full"},
    "gradients": {"damping": 0.0},
    "resources": {"models_per_task": 8},
}


def test_removal_sets_are_the_top_k_by_score_with_their_predicted_change():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 0.1, size=(3, 30))
    scores[1, [7, 3, 20]] = [3.0, 2.0, 1.0]  # target 1 rests on three points
    plan = PlanConfig(name="removal", kind="removal", count=3, ks=(1, 2, 5), brittle_max=0.5)
    reference = np.array([0.5, 2.5, -1.0])
    targets = np.array([10, 11, 12])
    sets, removed = removal_sets(plan, targets, {"datamodels": scores}, reference, 30)
    assert len(sets) == len(removed) == n_masks(plan, 30) == 1 + 3 * 4
    assert sets["kind"].iloc[0] == "baseline" and len(removed[0]) == 0
    row = sets[(sets["target"] == 11) & (sets["k"] == 2) & (sets["kind"] == "grid")].index[0]
    assert removed[row].tolist() == [7, 3]
    assert sets.loc[row, "predicted"] == pytest.approx(-5.0)
    for index, entry in sets.iloc[1:].iterrows():
        number = int(entry["target"]) - 10
        expected = np.argsort(-scores[number], kind="stable")[: int(entry["k"])]
        assert sorted(removed[index].tolist()) == sorted(expected.tolist())
        assert entry["predicted"] == pytest.approx(-scores[number, removed[index]].sum())
    # brittle: target 1's margin 2.5 flips once its top point (3.0) goes: k = 1
    support = brittleness(scores, reference).support
    brittle = sets[sets["kind"] == "brittle"].reset_index(drop=True)
    assert support[1] == 1 and brittle.loc[1, "k"] == 1
    assert brittle.loc[1, "predicted_support"] == 1
    assert top_helpful(scores[1], 3).tolist() == [7, 3, 20]


@pytest.fixture(scope="module")
def logreg_run(tmp_path_factory):
    """One run (one prepare) for the retraining tests: ``full``, the removal plan and a
    ``stored`` plan ``picked`` whose masks a test writes itself. Trained, influence
    estimated, removal run; returns (config, run directory, the first train's summary)."""
    tree = json.loads(json.dumps(LOGREG))
    tree["plans"].append({"name": "picked", "kind": "stored", "count": 4})
    config = config_from_dict(tree)
    out = str(tmp_path_factory.mktemp("removal") / "run")
    executor = SerialExecutor()
    first = dm.train(config, out, executor=executor, show_progress=False)
    dm.estimate(config, out, "influence", executor=executor, show_progress=False)
    dm.removal(config, out, executor=executor, show_progress=False)
    return config, out, first


def test_a_stored_mask_plan_waits_for_its_table_trains_once_and_resumes(logreg_run):
    config, out, first = logreg_run
    run = Run(out)
    assert first.trained == 1 == first.planned  # only `full`: the stored-mask plans waited
    assert len(run.model_ids(plan="picked")) == 0
    status = plan_status(config, run).set_index("plan")
    assert status.loc["picked", ["waiting", "missing"]].tolist() == [4, 0]  # not trainable yet
    removed = [np.array([], np.int64), np.array([0]), np.array([1, 2]), np.arange(10)]
    run.write_plan_masks("picked", removed)
    assert plan_status(config, run).set_index("plan").loc["picked", "missing"] == 4
    with pytest.raises(StoreError, match="written once"):
        run.write_plan_masks("picked", removed)
    executor = SerialExecutor()
    assert dm.train(config, out, executor=executor, show_progress=False).trained == 4
    masks = run.masks(plan="picked")
    for mask, gone in zip(masks, removed, strict=True):
        assert (~mask).nonzero()[0].tolist() == gone.tolist()
    assert verify(run) == []
    # resume: a lost shard's models (and only they) are trained again
    every = np.sort(plan_models(config, run.n_train).model_id)
    shard = sorted(run.fs.listdir("models"))[-1]
    run.fs.filesystem.delete_file(run.fs.join(f"models/{shard}"))
    lost = len(every) - len(run.stored_model_ids())
    assert dm.train(config, out, executor=executor, show_progress=False).trained == lost > 0
    assert np.array_equal(run.stored_model_ids(), every)
    assert dm.train(config, out, executor=executor, show_progress=False).trained == 0
    picked = plan_status(config, run).set_index("plan").loc["picked"]
    assert picked[["done", "waiting"]].tolist() == [4, 0]


def test_logreg_removal_is_the_exact_effect_of_training_without_the_set(logreg_run):
    from datamodels.orchestrate.context import Context
    from datamodels.trainers.api import train_batch

    config, out, _ = logreg_run
    run = Run(out)
    results, sets = run.removal_results(), run.removal_sets()
    assert len(results) == len(sets) - 1 == 4 * 3
    assert (results["n_seeds"] == 2).all()
    # the exact answer: train without each set, directly
    data = Context().data(run, config)
    removed = run.plan_masks("removal")
    masks = np.ones((len(removed), run.n_train), dtype=bool)
    for row, gone in enumerate(removed):
        masks[row, gone] = False
    margins = train_batch(masks, np.zeros(len(masks), np.int64), data, config).margins
    for row in results.itertuples():
        chosen = sets[(sets["method"] == row.method) & (sets["target"] == row.target)
                      & (sets["k"] == row.k) & (sets["kind"] == row.kind)]
        exact = margins[int(chosen["mask_index"].iloc[0]), row.target] - margins[0, row.target]
        assert row.actual == pytest.approx(exact, abs=1e-4)
    # the influence function predicts these removals well on a convex model
    corr = np.corrcoef(results["predicted"], results["actual"])[0, 1]
    assert corr > 0.9
    frame = dm.evaluate(out)
    pearson = frame[(frame["method"] == "influence") & (frame["metric"] == "removal_pearson")]
    assert pearson["value"].iloc[0] == pytest.approx(corr, abs=1e-9)
    assert {"removal_flip_rate_k1", "removal_flip_rate_k4", "brittle_verified_le_5pct"} <= set(
        frame["metric"]
    )
    # the tables are SQL views too; the removal models are ordinary rows of `models`
    counted = query(run, "SELECT (SELECT count(*) FROM removal_results) AS sets, "
                         "(SELECT count(*) FROM models WHERE plan = 'removal') AS models")
    assert counted.values.tolist() == [[12, 26]]
    # the command: everything current, nothing retrained; one line about the results
    from typer.testing import CliRunner

    from datamodels.cli import app

    sets_marker = run.fs.stats("_stages", "removal_sets.json")
    result = CliRunner().invoke(app, ["removal", out, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "12 sets (4 targets)" in result.output and len(run.model_ids("removal")) == 26
    # the sets are a stage's output: marked, current, and not written again
    assert sets_marker and run.fs.stats("_stages", "removal_sets.json") == sets_marker
    from datamodels.stages.removal import RemovalSetsStage
    from datamodels.stages.states import stage_state

    assert stage_state(RemovalSetsStage(config, run)) == "done"


def test_a_bumped_removal_version_makes_its_stages_stale_and_recomputes_the_results(
    logreg_run, monkeypatch
):
    from datamodels.stages.removal import RemovalSetsStage, RemovalStage
    from datamodels.stages.states import stage_state, stage_states

    config, out, _ = logreg_run
    run = Run(out)
    module = __import__("datamodels.applications.removal", fromlist=["VERSION"])

    def removal_states() -> list[str]:  # each stage by its own marker
        return [stage_state(cls(config, run)) for cls in (RemovalSetsStage, RemovalStage)]

    for table in ("removals/sets.parquet", "removals/results.parquet"):
        assert run.table_versions(table) == {"application.removal": 1}
    assert run.table_versions("scores/influence.parquet") == {"method.influence": 1}
    before = stage_states(config, run).set_index("stage")
    assert removal_states() == ["done", "done"]
    monkeypatch.setattr(module, "VERSION", 2)
    after = stage_states(config, run).set_index("stage")
    assert removal_states() == ["stale", "stale"]
    assert after.loc["removal", "changed"] == "application.removal 1 -> 2"
    others = ["prepare", "train", "fit", "estimate"]
    assert after.loc[others, "state"].tolist() == before.loc[others, "state"].tolist()
    results = run.fs.join("removals/results.parquet")
    masks = run.fs.stats("plan_masks", "removal.parquet")
    written = run.fs.filesystem.get_file_info(results).mtime_ns
    trained = len(run.model_ids("removal"))
    dm.removal(config, out, executor=SerialExecutor(), show_progress=False)
    assert run.fs.filesystem.get_file_info(results).mtime_ns > written  # recomputed
    assert run.fs.stats("plan_masks", "removal.parquet") == masks  # written once: kept
    assert len(run.model_ids("removal")) == trained  # nothing retrained
    assert run.table_versions("removals/results.parquet") == {"application.removal": 2}
    marker = json.loads(run.fs.read_bytes("_stages/removal.json"))
    assert marker["versions"] == {"application.removal": 2}
    assert removal_states() == ["done", "done"]


def test_removal_without_a_removal_plan_is_one_line():
    from datamodels.errors import ConfigError
    from datamodels.stages.removal import require_removal_plan

    with pytest.raises(ConfigError, match="no removal plan; add one") as err:
        require_removal_plan(config_from_dict({}))
    assert "\n" not in str(err.value)


def test_removal_metrics_on_a_constructed_table():
    rows = []
    # 4 targets, k in {1, 5} on n_train = 100: targets 0 and 1 flip at k = 5, target 0 also at 1
    flips = {(0, 1): True, (0, 5): True, (1, 1): False, (1, 5): True, (2, 1): False,
             (2, 5): False, (3, 1): False, (3, 5): False}
    for (target, k), flipped in flips.items():
        rows.append({"method": "m", "target": target, "k": k, "kind": "grid",
                     "predicted": -float(k) - target, "actual": -float(k) - 2 * target,
                     "stderr": 0.1, "n_seeds": 2, "baseline_margin": 1.0 if target < 3 else -1.0,
                     "retrained_margin": -1.0 if flipped else 1.0,
                     "predicted_flipped": k == 5, "flipped": flipped,
                     "predicted_support": [1.0, 3.0, 7.0, np.inf][target]})
    rows.append({**rows[0], "kind": "brittle", "k": 3, "target": 1, "predicted": -3.0,
                 "actual": -5.0, "predicted_support": 3.0, "flipped": True})
    results = pd.DataFrame(rows)
    metrics = {r["metric"]: r for r in removal_metrics(results, n_train=100)}
    predicted, actual = results["predicted"], results["actual"]
    expected = np.corrcoef(predicted, actual)[0, 1]
    assert metrics["removal_pearson"]["value"] == pytest.approx(expected)
    # target 3 was wrong to begin with: rates over targets 0..2
    assert metrics["removal_flip_rate_k1"]["value"] == pytest.approx(1 / 3)
    assert metrics["removal_flip_rate_k5"]["value"] == pytest.approx(2 / 3)
    assert metrics["removal_flip_rate_predicted_k5"]["value"] == 1.0
    assert metrics["removal_flip_rate_k5"]["n_targets"] == 3
    # ≤ 1% (k ≤ 1): predicted support ≤ 1 for target 0; verified: target 0 flipped at k = 1
    assert metrics["brittle_predicted_le_1pct"]["value"] == pytest.approx(1 / 3)
    assert metrics["brittle_verified_le_1pct"]["value"] == pytest.approx(1 / 3)
    # ≤ 5% (k ≤ 5): supports 1, 3 (target 2's is 7); verified: targets 0 and 1
    assert metrics["brittle_predicted_le_5pct"]["value"] == pytest.approx(2 / 3)
    assert metrics["brittle_verified_le_5pct"]["value"] == pytest.approx(2 / 3)
    assert metrics["brittle_confirmed"]["value"] == 1.0


def test_removal_plan_validation_and_hash():
    base = config_from_dict({"plans": [{"name": "train", "count": 10}]})
    with_fields = config_from_dict(
        {"plans": [{"name": "train", "count": 10, "ks": [10, 50], "brittle": True}]}
    )
    assert base.hash == with_fields.hash  # the removal fields at their defaults hash as before
    with pytest.raises(Exception, match="count .*or targets"):
        config_from_dict({"plans": [{"name": "r", "kind": "removal"}]})
    with pytest.raises(Exception, match="one removal plan"):
        config_from_dict({"plans": [{"name": "a", "kind": "removal", "count": 2},
                                    {"name": "b", "kind": "removal", "count": 2}]})
