"""Readers use nothing `verify` would name: a compaction stopped half way, a corrupt page, or a
shard rewritten without its config hash whose masks are not the plan's. ``train`` sets such
shards aside and trains their models again; its tasks store no model twice."""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datamodels import api
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import StoreError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run, RunFS, guards, query, verify, write_model_shard
from datamodels.store import compact as compact_module
from datamodels.store.guards import stored_ids_among

from .conftest import BUCKET, corrupt_page

NULL_RUN = {
    "name": "digits_null_guards",
    "dataset": {"name": "digits", "limit_train": 100, "limit_test": 30},
    "model": {"arch": "null"},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 40},
        {"name": "eval", "alpha": 0.5, "count": 8},
    ],
    "fit": {"n_lambdas": 4},
    "resources": {"models_per_task": 8},
}
PLANNED = 48


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """The record of verified files in a folder of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("guards") / "run"
    api.train(config_from_dict(NULL_RUN), str(out), executor=SerialExecutor(), show_progress=False)
    assert len(Run(str(out)).shard_files()) == 6
    return out


@pytest.fixture
def run(trained, tmp_path) -> Run:
    shutil.copytree(trained, tmp_path / "run")
    return Run(str(tmp_path / "run"))


def _train(run: Run):
    return api.train(
        config_from_dict(NULL_RUN), run, executor=SerialExecutor(), show_progress=False
    )


# -- an interrupted compaction -----------------------------------------------------------------


def _crash(*args, **kwargs):
    raise RuntimeError("crash")


def test_status_query_and_fit_refuse_while_a_compaction_hides_models(run, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(compact_module, "publish", _crash)
        with pytest.raises(RuntimeError):
            api.compact(run, target_rows=20)
    for argv in (["status", run.uri], ["query", run.uri, "SELECT count(*) FROM models"]):
        result = CliRunner().invoke(app, argv)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and f"run `datamodels compact {run.uri}`" in lines[0]
    with pytest.raises(StoreError, match="datamodels compact"):
        api.fit(run)
    with pytest.raises(StoreError, match="datamodels compact"):
        run.masks_and_margins()
    assert _train(run).trained == 0  # train repairs it without asking
    assert len(run.model_ids()) == PLANNED and verify(run) == []


# -- corrupt pages -------------------------------------------------------------------------------


def test_query_refuses_a_corrupt_margins_page(synthetic):
    path = synthetic.run.fs.join(synthetic.shard_paths[1])
    corrupt_page(path, "margins")
    with pytest.raises(StoreError, match="corrupt") as refused:
        query(synthetic.run, "SELECT max(abs(margins[1])) AS m FROM models")
    assert synthetic.shard_paths[1] in str(refused.value)
    result = CliRunner().invoke(app, ["query", synthetic.run.uri, "SELECT 1"])
    assert result.exit_code == 2 and "corrupt" in result.output


def test_query_refuses_a_corrupt_page_in_any_table(synthetic):
    run = synthetic.run
    rng = np.random.default_rng(0)
    run.write_scores("random", np.arange(5), rng.normal(size=(5, run.n_train)))
    assert len(query(run, "SELECT * FROM scores_random")) == 5
    corrupt_page(run.fs.join("scores/random.parquet"), "scores")
    with pytest.raises(StoreError, match="scores/random.parquet.*corrupt"):
        query(run, "SELECT max(abs(scores[1])) FROM scores_random")


def test_verified_files_are_read_once_per_change(synthetic, monkeypatch):
    reads = []
    real = guards.inspect_shard

    def counted(fs, name, *args, **kwargs):
        reads.append(name)
        return real(fs, name, *args, **kwargs)

    monkeypatch.setattr(guards, "inspect_shard", counted)
    expected = int(synthetic.margins[:, 0].astype(np.float64).sum().round(3) * 1000)
    sql = "SELECT round(sum(margins[1]::DOUBLE), 3) * 1000 AS s FROM models"
    assert int(query(synthetic.run, sql)["s"].item()) == expected
    assert len(reads) == 3  # every shard read whole once
    query(synthetic.run, sql)
    assert len(reads) == 3  # unchanged: not read again
    guards._memory.clear()  # a new process: the record on disk answers
    query(synthetic.run, sql)
    assert len(reads) == 3
    table = pq.read_table(synthetic.run.fs.join(synthetic.shard_paths[0]))
    synthetic.run.write_models(table)  # rewritten: a new modification time
    query(synthetic.run, sql)
    assert reads[3:] == [synthetic.shard_paths[0].split("/")[1]]


def test_a_verified_shard_corrupted_with_its_mtime_set_back_is_read_again(synthetic):
    """Same size, the old modification time given back with os.utime: the change time (which
    os.utime cannot set) tells the cache the shard changed, and query refuses the page."""
    sql = "SELECT max(abs(margins[1])) AS m FROM models"
    query(synthetic.run, sql)  # every shard verified and remembered
    path = synthetic.run.fs.join(synthetic.shard_paths[1])
    before = os.stat(path)
    corrupt_page(path, "margins")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(StoreError, match="corrupt") as refused:
        query(synthetic.run, sql)
    assert synthetic.shard_paths[1] in str(refused.value)


def test_a_table_on_s3_rewritten_within_its_second_has_a_new_stamp(s3_endpoint):
    fs = RunFS(f"s3://{BUCKET}/stamps/{uuid.uuid4().hex}")
    fs.write_bytes_atomic("scores/a.parquet", b"x" * 64)
    first = fs.stamps("scores")["a.parquet"]
    fs.write_bytes_atomic("scores/a.parquet", b"y" * 64)  # same size, same second (likely)
    second = fs.stamps("scores")["a.parquet"]
    assert first[0] == second[0] == "64"
    assert first[1].startswith("etag:") and first != second


def test_train_sets_a_corrupt_shard_aside_and_trains_its_models_again(run):
    before = run.masks_and_margins()
    assert _train(run).trained == 0  # nothing to do
    shard = run.shard_files()[2]
    corrupt_page(run.fs.join("models", shard), "margins")
    summary = _train(run)
    assert [entry.split(" ")[0] for entry in summary.quarantined] == [f"models/{shard}"]
    assert summary.trained == 8
    assert verify(run) == []
    after = run.masks_and_margins()  # the null trainer is deterministic: the same models
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


# -- a shard rewritten without its config hash -----------------------------------------------


def _rewrite_without_hash(run: Run, shard: str) -> None:
    """The shard written again without its config_hash, one mask bit flipped (the same
    name: the same ids)."""
    table = pq.read_table(run.fs.join("models", shard))
    masks = np.array(table.column("mask").to_pylist())
    masks[0, 0] = not masks[0, 0]
    column = pa.FixedSizeListArray.from_arrays(pa.array(masks.reshape(-1)), masks.shape[1])
    table = table.set_column(table.schema.get_field_index("mask"), "mask", column)
    write_model_shard(run.fs, table.replace_schema_metadata(None), config_hash=None)


def test_a_shard_without_its_config_hash_and_off_plan_is_not_used(run):
    shard = run.shard_files()[1]
    _rewrite_without_hash(run, shard)
    assert [p.kind for p in verify(run)] == ["plan"]
    with pytest.raises(StoreError, match=f"models/{shard}: plan"):
        api.fit(run)
    assert len(run.stored_model_ids()) == PLANNED - 8  # status does not count it
    summary = _train(run)
    assert [entry.split(" ")[0] for entry in summary.quarantined] == [f"models/{shard}"]
    assert summary.trained == 8
    assert verify(run) == []
    assert len(run.model_ids()) == PLANNED


# -- tasks store no model twice ------------------------------------------------------------------


def test_stored_ids_among_reads_only_overlapping_shards(run, monkeypatch):
    reads = []
    real = guards.inspect_shard

    def counted(fs, name, *args, **kwargs):
        reads.append(name)
        return real(fs, name, *args, **kwargs)

    monkeypatch.setattr(guards, "inspect_shard", counted)
    run.quarantine(run.shard_files()[1], "test: models 8-15 not stored")
    found = stored_ids_among(run, np.array([12, 3, 9, 17]))
    np.testing.assert_array_equal(found, [3, 17])
    assert len(reads) == 2  # the shards of ids 0-7 and 16-23, of five


def test_a_late_task_adds_nothing_already_stored(run):
    """A task of a superseded driver finishing after the new driver stored its models: the
    shard it writes holds only what is not stored yet."""
    from datamodels.orchestrate.train_task import Receipt
    from datamodels.stages.train import TrainStage
    from datamodels.trainers.api import TrainOutcome

    run.quarantine(run.shard_files()[0], "test: as if never trained")  # models 0-7
    stage = TrainStage(config_from_dict(NULL_RUN), run)
    planned = stage.planned.select_ids(np.arange(0, 16))  # 0-7 missing, 8-15 stored
    k = len(planned.model_id)
    outcome = TrainOutcome(
        margins=np.zeros((k, run.n_eval), np.float32),
        train_loss=np.zeros(k, np.float32),
        eval_accuracy=np.zeros(k, np.float32),
        seconds=np.zeros(k, np.float32),
        failed=np.zeros(k, bool),
    )
    receipt = Receipt(worker="late")
    masks = np.zeros((k, run.n_train), bool)
    stage.write_shard(planned, masks, outcome, np.ones(k, np.int32), receipt)
    assert receipt.written == list(range(8)) and receipt.skipped == list(range(8, 16))
    ids = run.model_ids()
    assert np.unique(ids).size == ids.size == PLANNED  # nothing stored twice
