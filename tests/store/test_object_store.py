"""Every stage on an ``s3://`` run directory, against moto's standalone S3 server on 127.0.0.1.

The server is found the way a cluster finds its object store: ``AWS_ENDPOINT_URL`` and the
usual credential variables in the environment of the driver and (inherited) its Ray workers.
The assertions are the local-disk tests' own: the contract tables, masks from the plan, the
run-directory query (docs/run-directory.md), resume, checkpoints, scores of every estimator,
a clean ``verify``, and a query sandbox that reads nothing but the run.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from datamodels import api
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import StoreError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import masks_for, plan_models
from datamodels.store import Run, query, verify
from datamodels.store.checkpoints import read_checkpoint_index

from .conftest import BUCKET

# Small enough to be quick (the exact Hessian of influence grows with the square of the
# MLP's parameters), large enough for fit (22 models at least) and for two model shards.
CONFIG = {
    "name": "mlp_s3",
    "dataset": {"name": "digits", "limit_train": 120, "limit_test": 20},
    "model": {"arch": "mlp", "hidden": 4},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.1},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 24},
        {"name": "eval", "alpha": 0.5, "count": 6},
    ],
    "checkpoints": {"plan": "train", "models": 3, "epochs": [1]},
    "fit": {"n_lambdas": 4},
    "gradients": {"proj_dim": 16, "trak_models": 2},
    "resources": {"models_per_task": 15},
}
MODEL_COLUMNS = {
    "model_id": pa.int64(),
    "plan": pa.string(),
    "alpha": pa.float32(),
    "seed": pa.int64(),
    "train_loss": pa.float32(),
    "eval_accuracy": pa.float32(),
    "seconds": pa.float32(),
    "attempt": pa.int32(),
    "worker": pa.string(),
}
SCORED = (
    "datamodels", "downsampling", "banzhaf", "knn_shapley",
    "influence", "influence_pert", "tracin", "representer", "trak",
)  # fmt: skip


@pytest.fixture(scope="module")
def ray_with_s3(s3_endpoint):
    """A local Ray cluster started after the endpoint is in the environment (its workers
    inherit it); a cluster some earlier test left running would not have it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_run(ray_with_s3, tmp_path_factory):
    """``datamodels run`` on s3://: (config, uri, CLI output, the working directory)."""
    workdir = tmp_path_factory.mktemp("s3_cwd")
    config_path = workdir / "c.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    uri = f"s3://{BUCKET}/runs/mlp"
    before = os.getcwd()
    os.chdir(workdir)  # anything written to a local path instead would land here
    try:
        result = CliRunner().invoke(app, ["run", str(config_path), "--out", uri, "--quiet"])
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.output[-3000:]
    return config_from_dict(CONFIG), uri, result.output, workdir


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def test_train_writes_the_contract_tables_to_the_object_store(s3_run):
    config, uri, output, workdir = s3_run
    run = Run(uri)
    assert not run.fs.is_local and run.local_path("data/examples.beton") is None
    n_train, n_eval = run.sizes()
    assert (n_train, n_eval) == (120, 140)  # the test split, then the train split
    planned = plan_models(config, n_train)
    np.testing.assert_array_equal(run.model_ids(), planned.model_id)  # unique and complete
    np.testing.assert_array_equal(run.masks(), masks_for(config, planned, n_train))
    filesystem, root = _s3(uri)
    shard = f"{root}/models/{run.shard_files()[0]}"
    schema = pq.read_schema(shard, filesystem=filesystem)
    for name, dtype in MODEL_COLUMNS.items():
        assert schema.field(name).type == dtype, name
    assert schema.field("mask").type == pa.list_(pa.bool_(), n_train)
    assert schema.field("margins").type == pa.list_(pa.float32(), n_eval)
    assert schema.metadata[b"schema_version"] == b"3"
    everything = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    names = [info.path for info in everything]
    assert not [name for name in names if ".tmp-" in name]  # no temp objects left behind
    assert sorted(os.listdir(workdir)) == ["c.yaml"]  # nothing went to a local path instead
    assert verify(run) == []

    index = read_checkpoint_index(run.fs)
    assert sorted(zip(index.model_id, index.epoch, strict=True)) == [
        (m, e) for m in (0, 1, 2) for e in (1, 2)
    ]
    status = CliRunner().invoke(app, ["status", uri])
    assert status.exit_code == 0
    assert f"checkpoints: 3 models (epochs 1, 2), 6 files in {uri}/checkpoints/" in status.output
    verified = CliRunner().invoke(app, ["verify", uri])
    assert verified.exit_code == 0 and verified.output.strip() == f"verify: {uri}: OK"


def test_every_estimator_and_evaluate_write_their_tables(s3_run):
    config, uri, output, _ = s3_run
    run = Run(uri)
    targets = int((run.examples().split == "test").sum())
    for method in SCORED:
        got_targets, scores = run.scores(method)
        assert scores.shape == (targets, run.n_train) and np.isfinite(scores).all(), method
        assert f"estimate: {method} in " in output or method == "datamodels"
    assert set(run.self_scores()) >= {"downsampling", "influence", "tracin", "trak"}
    assert len(run.weights()) > 0 and len(run.targets()) > 0
    evaluation = run.evaluation()
    assert set(evaluation.method) == set(SCORED) | {"downsampling_correct"}
    assert (evaluation.metric == "lds").all() and evaluation.value.notna().all()


def test_knn_shapley_on_s3_equals_the_local_disk_run(s3_run, tmp_path):
    config, uri, _, _ = s3_run
    local = str(tmp_path / "run")
    api.prepare(config, local)
    api.estimate(config, local, "knn_shapley", executor=SerialExecutor(), show_progress=False)
    local_targets, local_scores = Run(local).scores("knn_shapley")
    s3_targets, s3_scores = Run(uri).scores("knn_shapley")
    np.testing.assert_array_equal(s3_targets, local_targets)
    np.testing.assert_array_equal(s3_scores, local_scores)


def test_a_second_run_resumes_and_writes_nothing(s3_run):
    config, uri, _, _ = s3_run
    filesystem, root = _s3(uri)
    selector = pafs.FileSelector(f"{root}/models", recursive=True)
    before = {(i.path, i.size, i.mtime_ns) for i in filesystem.get_file_info(selector)}
    again = api.train(config, uri, show_progress=False)
    assert again.trained == 0 and again.already_done == 30 and again.checkpointed == 0
    after = {(i.path, i.size, i.mtime_ns) for i in filesystem.get_file_info(selector)}
    assert after == before


def test_sql_reads_the_object_store_run_and_nothing_else(s3_run):
    config, uri, _, _ = s3_run
    run = Run(uri)
    masks, margins = run.masks(), run.margins()
    # the core datamodels question (README) over the models view (DuckDB lists are 1-based)
    got = query(
        run, "SELECT mask[43] AS included, avg(margins[18]) AS m FROM models GROUP BY 1 ORDER BY 1"
    )
    for included, mean in zip(got.included, got.m, strict=True):
        np.testing.assert_allclose(mean, margins[masks[:, 42] == included, 17].mean(), rtol=1e-5)
    frame = query(run, "SELECT plan, count(*) AS n FROM models GROUP BY plan ORDER BY plan")
    assert frame.to_dict("list") == {"plan": ["eval", "train"], "n": [6, 24]}
    cli = CliRunner().invoke(app, ["query", uri, "SELECT count(*) AS n FROM scores_knn_shapley"])
    assert cli.exit_code == 0 and cli.output.split() == ["n", "20"]
    # DuckDB itself never touches the network or the local disk
    shard = f"{uri}/models/{run.shard_files()[0]}"
    for sql in (
        f"SELECT count(*) FROM read_parquet('{shard}')",
        f"SELECT count(*) FROM '{shard}'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/*')",
    ):
        with pytest.raises(StoreError, match="query failed"):
            query(run, sql)


def test_duplicate_ids_on_s3_are_named_by_verify_and_refused_by_sql(s3_run):
    _, uri, _, _ = s3_run
    filesystem, root = _s3(uri)
    copy = f"{root}-duplicate"
    for rel_path in ("config.yaml", "examples.parquet"):
        filesystem.copy_file(f"{root}/{rel_path}", f"{copy}/{rel_path}")
    shards = Run(uri).shard_files()
    for name in shards[:1]:
        filesystem.copy_file(f"{root}/models/{name}", f"{copy}/models/{name}")
        filesystem.copy_file(f"{root}/models/{name}", f"{copy}/models/again-{name}")
    duplicate = Run(f"s3://{copy}")
    problems = [p for p in verify(duplicate) if p.kind == "duplicate"]
    assert problems and all("again-" in p.file or shards[0] in p.file for p in problems)
    with pytest.raises(StoreError, match="same model_id is in more than one shard"):
        query(duplicate, "SELECT count(*) FROM models")
    result = CliRunner().invoke(app, ["verify", f"s3://{copy}"])
    assert result.exit_code == 1 and "duplicate" in result.output
    with filesystem.open_output_stream(f"{copy}/models/torn.parquet") as stream:
        stream.write(b"PAR1 not a parquet file")  # as a foreign tool's interrupted upload
    assert any(p.file.endswith("torn.parquet") for p in verify(duplicate))
    with pytest.raises(StoreError, match="torn.parquet"):
        query(duplicate, "SELECT count(*) FROM models")


def test_an_endpoint_given_in_the_uri_reads_the_same_run(s3_run, s3_endpoint):
    _, uri, _, _ = s3_run
    host = s3_endpoint.split("://", 1)[1]
    run = Run(f"{uri}?endpoint_override={host}&scheme=http&region=us-east-1")
    np.testing.assert_array_equal(run.model_ids(), Run(uri).model_ids())
    assert run.fs.display("models/x.parquet") == f"{uri}/models/x.parquet"
    with pytest.raises(StoreError, match=f"{uri}/nope.parquet does not exist"):
        run.fs.read_bytes("nope.parquet")
