"""``datamodels sparse-layer`` end to end on a real digits MLP checkpoint: the chosen layer
meets its density target and stays within a few points of the dense layer, its tables agree
with one another and with the checkpoint, the CLI and the report show it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from datamodels import api
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import EstimateError
from datamodels.orchestrate.context import Context
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.report import build_report
from datamodels.stages.sparse_layer import choose_lambda
from datamodels.store import Run, query
from datamodels.store.checkpoints import load_checkpoint

# one model on the whole train split, the digits default's MLP and recipe, checkpointed
DIGITS_MLP = {
    "name": "digits_sparse",
    "dataset": {"name": "digits"},
    "model": {"arch": "mlp", "hidden": 64},
    "train": {"epochs": 10, "batch_size": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "plans": [{"name": "train", "alpha": 1.0, "count": 1}],
    "checkpoints": {"plan": "train"},
    "sparse_layer": {"n_lambdas": 40, "eps": 0.01},
    "resources": {"models_per_task": 1},
}


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    config = config_from_dict(DIGITS_MLP)
    uri = str(tmp_path_factory.mktemp("sparse") / "run")
    api.train(config, uri, executor=SerialExecutor(), show_progress=False)
    summary = api.sparse_layer(config, uri)
    yield config, uri, summary
    torch.set_num_threads(before)


def test_sparse_layer_meets_the_density_target_near_dense_accuracy(sparse_run):
    config, uri, summary = sparse_run
    target = config.sparse_layer.max_features
    assert summary["chosen_max_features_per_class"] <= target
    assert summary["num_features"] == 64 and summary["num_classes"] == 10
    assert summary["dense_test_accuracy"] > 0.9  # a real trained network
    assert summary["sparse_test_accuracy"] >= summary["dense_test_accuracy"] - 0.04

    run = Run(uri)
    path = pd.read_parquet(run.local_path("sparse_layer/path.parquet"))
    assert path["chosen"].sum() == 1
    chosen = path[path["chosen"]].iloc[0]
    assert int(chosen["lam_index"]) == summary["chosen_lam_index"]
    # the chosen λ: the best validation accuracy among those within the target
    within = path[path["max_features_per_class"] <= target]
    assert chosen["val_accuracy"] == within["val_accuracy"].max()
    assert path["converged"].all() and (path["kkt"] <= config.sparse_layer.tol).all()
    assert (np.diff(path["lam"]) < 0).all() and (np.diff(path["objective"]) < 0).all()

    # weights: the chosen layer reproduces the path's test accuracy from raw features
    weights = pd.read_parquet(run.local_path("sparse_layer/weights.parquet"))
    mine = weights[weights["lam_index"] == chosen["lam_index"]]
    assert len(mine) == chosen["nnz"]
    assert mine.groupby("class").size().max() <= target
    features = pd.read_parquet(run.local_path("sparse_layer/features.parquet"))
    assert len(features) == len(mine)

    # the features, recomputed from the checkpoint by hand: relu(x W1 + b1) of the MLP
    data = Context().data(run, config)
    w1, b1, *_ = load_checkpoint(run.fs, summary["checkpoint"])["layers"]
    hidden = torch.relu(data.eval_x[: data.n_test].double() @ w1.double() + b1.double()).numpy()
    train_hidden = torch.relu(data.train_x.double() @ w1.double() + b1.double()).numpy()
    raw = np.zeros((64, 10))
    raw[mine["feature"], mine["class"]] = mine["raw_weight"]
    mean = features.drop_duplicates("feature").set_index("feature")["feature_mean"]
    bias = np.asarray(chosen["bias"]) - mean.reindex(range(64), fill_value=0).to_numpy() @ raw
    test_y = data.eval_y[: data.n_test].numpy()
    accuracy = ((hidden @ raw + bias).argmax(1) == test_y).mean()
    assert accuracy == pytest.approx(summary["sparse_test_accuracy"], abs=1e-12)
    # each listed feature's top inputs are the training inputs that activate it most
    for row in features.itertuples():
        top = np.sort(train_hidden[:, row.feature])[::-1][: len(row.top_train_positions)]
        np.testing.assert_allclose(row.top_activations, top, rtol=1e-9)
        np.testing.assert_allclose(train_hidden[row.top_train_positions, row.feature], top)
    assert (features.groupby("class")["rank"].apply(lambda r: list(r) == list(range(len(r))))).all()


def test_rerun_is_up_to_date_and_the_cli_and_report_show_it(sparse_run, tmp_path):
    config, uri, summary = sparse_run
    assert api.sparse_layer(uri) == summary  # the run's own config; nothing recomputed
    result = CliRunner().invoke(app, ["sparse-layer", uri])
    assert result.exit_code == 0, result.output
    assert f"test accuracy {summary['sparse_test_accuracy']:.4f}" in result.output
    page = build_report(uri, tmp_path / "report.html").read_text()
    section = page[page.index('<section id="sparse_layer">') :]
    assert "Sparse decision layer" in section and "no sparse_layer/" not in section
    assert section.count("data:image/png;base64,") == 2  # the path and the feature images
    assert f"{summary['sparse_test_accuracy']:.4f}" in section
    sql = query(uri, "SELECT sparse_test_accuracy FROM sparse_summary")  # the SQL views
    assert sql.iloc[0, 0] == pytest.approx(summary["sparse_test_accuracy"])


def test_its_tables_record_the_glm_version_and_a_bump_makes_it_stale(sparse_run, monkeypatch):
    from datamodels.stages.sparse_layer import OUTPUTS, SparseLayerStage
    from datamodels.stages.states import stage_state, stage_states

    config, uri, _ = sparse_run
    run = Run(uri)
    assert [run.table_versions(path) for path in OUTPUTS] == [{"regress.glm": 1}] * 4
    assert stage_state(SparseLayerStage(config, run)) == "done"
    glm = __import__("datamodels.regress.glm", fromlist=["VERSION"])
    monkeypatch.setattr(glm, "VERSION", 2)
    assert stage_state(SparseLayerStage(config, run)) == "stale"
    states = stage_states(config, run).set_index("stage")
    assert states.loc["sparse_layer", ["state", "changed"]].tolist() == [
        "stale", "regress.glm 1 -> 2"]
    assert states.loc["train", ["state", "changed"]].tolist() == ["done", ""]


def test_a_model_without_checkpoint_is_refused(sparse_run):
    config, uri, _ = sparse_run
    other = config_from_dict(DIGITS_MLP, ["sparse_layer.model_id=5"])
    with pytest.raises(EstimateError, match="model_id=5 has no checkpoint"):
        api.sparse_layer(other, uri)


def test_choose_lambda_prefers_accuracy_within_the_target_then_sparsity():
    per_class = np.array([[0, 0], [2, 1], [4, 3], [6, 2], [12, 3]])
    val = np.array([0.1, 0.8, 0.9, 0.9, 0.99])
    assert choose_lambda(per_class, val, 6) == 2  # 0.99 breaks the target; tie → sparser
    assert choose_lambda(per_class, val, 1) == 0
