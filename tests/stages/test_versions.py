"""Code versions in results: shards record their trainer, ``train`` refuses to mix trainer
versions in a plan, a bumped estimator makes its stage stale and recomputes it, and a run
written before versions were recorded (schema_version 2) reads and resumes as version 1."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datamodels.api import estimate, train
from datamodels.cli import app
from datamodels.cli.common import out_console
from datamodels.config import config_from_dict
from datamodels.errors import RunMismatchError
from datamodels.methods.downsampling import Downsampling
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.stages.base import digest
from datamodels.stages.estimate import EstimateStage
from datamodels.stages.states import stage_states
from datamodels.store import Run, query, verify
from datamodels.store.compact import compact_models
from datamodels.trainers.versions import TRAINER_VERSIONS

NULL = {
    "name": "versions_null",
    "dataset": {"name": "digits", "limit_train": 20, "limit_test": 6},
    "model": {"arch": "null"},
    "plans": [{"name": "train", "kind": "alpha", "alpha": 0.5, "count": 8}],
    "resources": {"models_per_task": 2},
}


def _train(config, uri):
    return train(config, uri, executor=SerialExecutor(), show_progress=False)


@pytest.fixture
def null_run(tmp_path):
    config = config_from_dict(NULL)
    uri = str(tmp_path / "run")
    _train(config, uri)
    return config, uri


def _labels(run: Run) -> list:
    return run.models(columns=["trainer"])["trainer"].to_pylist()


def _state(config, run: Run, stage: str) -> str:
    states = stage_states(config, run)
    return states.set_index("stage").loc[stage, "state"]


def test_every_shard_records_the_trainer_that_made_it(null_run):
    config, uri = null_run
    run = Run(uri)
    assert _labels(run) == ["null@1"] * 8
    marker = json.loads(run.fs.read_bytes("_stages/train.json"))
    assert marker["versions"] == {"trainer.null": 1}
    frame = query(run, "SELECT trainer, count(*) AS n FROM models GROUP BY trainer")
    assert frame.to_dict("records") == [{"trainer": "null@1", "n": 8}]


def test_resume_refuses_models_of_another_trainer_version(null_run, tmp_path, monkeypatch):
    config, uri = null_run
    run = Run(uri)
    lost = run.shard_files()[0]  # an interrupted run: one shard's models not written yet
    run.fs.filesystem.delete_file(run.fs.join(f"models/{lost}"))
    kept = len(run.model_ids())
    assert 0 < kept < 8
    monkeypatch.setitem(TRAINER_VERSIONS, "null", 2)
    assert _state(config, run, "train") == "stale"
    states = stage_states(config, run).set_index("stage")
    assert states.loc["train", "changed"] == "trainer.null 1 -> 2"
    with pytest.raises(RunMismatchError) as info:
        _train(config, uri)
    message = str(info.value)
    assert "\n" not in message
    assert f"plan 'train' has {kept} models made by trainer null@1" in message
    assert "trains with null@2" in message and "--out DIR" in message
    assert len(run.model_ids()) == kept  # nothing trained

    # the command line: the same one line, exit 1, no traceback
    config_path = tmp_path / "null.yaml"
    config_path.write_text(json.dumps(NULL))
    result = CliRunner().invoke(
        app, ["train", str(config_path), "--out", uri], env={"COLUMNS": "400"}
    )
    output = (result.stderr or "") + (result.stdout or "")
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output  # the refusal alone
    assert lines[0].startswith(f"error: train: plan 'train' has {kept} models made by trainer "
                               "null@1, but this datamodels trains with null@2")

    # a new run directory trains under the new version and records it
    fresh = str(tmp_path / "fresh")
    _train(config, fresh)
    assert _labels(Run(fresh)) == ["null@2"] * 8


def test_a_bumped_estimator_makes_its_stage_stale_and_recomputes(null_run, monkeypatch):
    config, uri = null_run
    run = Run(uri)
    first = estimate(config, uri, "downsampling", executor=SerialExecutor(), show_progress=False)
    assert first  # rows written
    assert _state(config, run, "estimate") == "done"
    stage = EstimateStage(config, run, "downsampling")
    # version 1 adds nothing to the digest: markers from before versions stay current
    assert stage.digest == digest(stage.fingerprint())
    again = estimate(config, uri, "downsampling", executor=SerialExecutor(), show_progress=False)
    assert again == {}  # current: nothing recomputed
    path = run.fs.join("scores/downsampling.parquet")
    before = run.fs.filesystem.get_file_info(path).mtime_ns
    # the tables record their producer's version in their own metadata too
    assert run.table_versions("scores/downsampling.parquet") == {"method.downsampling": 1}
    assert pq.read_schema(path).metadata[b"datamodels.versions"] == b'{"method.downsampling": 1}'

    assert stage_states(config, run).set_index("stage").loc["estimate", "changed"] == ""
    monkeypatch.setattr(Downsampling, "version", 2)
    assert _state(config, run, "estimate") == "stale"
    states = stage_states(config, run).set_index("stage")
    assert states.loc["estimate", "changed"] == "method.downsampling 1 -> 2"
    monkeypatch.setattr(out_console, "width", 250)  # whatever COLUMNS the process started with
    status = CliRunner().invoke(app, ["status", uri])
    assert status.exit_code == 0
    assert "method.downsampling 1 -> 2" in " ".join(status.stdout.split())
    assert EstimateStage(config, run, "downsampling").digest != stage.digest
    redone = estimate(config, uri, "downsampling", executor=SerialExecutor(), show_progress=False)
    assert redone == first
    assert run.fs.filesystem.get_file_info(path).mtime_ns > before
    marker = json.loads(run.fs.read_bytes("_stages/estimate-downsampling.json"))
    assert marker["versions"] == {"method.downsampling": 2}
    for table in ("scores/downsampling.parquet", "self_scores/downsampling.parquet"):
        assert run.table_versions(table) == {"method.downsampling": 2}
    assert _state(config, run, "estimate") == "done"


def _as_schema_2(run: Run) -> None:
    """Rewrite every shard as a schema_version 2 release wrote it: no ``trainer`` column."""
    for name in run.shard_files():
        path = run.fs.join(f"models/{name}")
        table = pq.read_table(path)
        metadata = {**table.schema.metadata, b"schema_version": b"2"}
        old = table.drop_columns(["trainer"]).replace_schema_metadata(metadata)
        pq.write_table(old, path)
        assert pq.read_schema(path).metadata[b"schema_version"] == b"2"


def test_a_schema_2_run_reads_resumes_as_version_1_and_compacts(null_run, monkeypatch):
    config, uri = null_run
    run = Run(uri)
    _as_schema_2(run)
    assert _labels(run) == [None] * 8  # read: version unknown
    assert verify(run) == []
    lost = run.shard_files()[-1]
    run.fs.filesystem.delete_file(run.fs.join(f"models/{lost}"))
    old = len(run.model_ids())

    _train(config, uri)  # legacy shards count as null@1, the current trainer: resumed
    labels = _labels(run)
    assert len(labels) == 8 and labels.count(None) == old
    assert labels.count("null@1") == 8 - old
    sql = "SELECT coalesce(trainer, '-') AS t, count(*) AS n FROM models GROUP BY 1 ORDER BY 1"
    assert query(run, sql).to_dict("records") == [
        {"t": "-", "n": old}, {"t": "null@1", "n": 8 - old},
    ]
    assert verify(run) == []

    summary = compact_models(run, target_rows=100)
    assert summary.merged == 1 and len(run.shard_files()) == 1
    assert sorted(map(str, _labels(run))) == sorted(map(str, labels))
    assert pa.types.is_string(pq.read_schema(run.fs.join(
        f"models/{run.shard_files()[0]}")).field("trainer").type)

    monkeypatch.setitem(TRAINER_VERSIONS, "null", 2)
    with pytest.raises(RunMismatchError, match=r"made by trainer null@1.*trains with null@2"):
        _train(config, uri)
