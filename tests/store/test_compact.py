"""``datamodels compact``: small shards merged into large ones with every row unchanged, and a
crash between any two steps loses nothing and never shows a model_id twice."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datamodels import api
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import StoreError
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.store import Run, query, verify, write_model_shard
from datamodels.store import compact as compact_module
from datamodels.store.compact import COMPACTING_DIR
from datamodels.store.guards import hidden_by_compaction

PLANNED = 52
NULL_RUN = {
    "name": "digits_null_compact",
    "dataset": {"name": "digits", "limit_train": 100, "limit_test": 30},
    "model": {"arch": "null"},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 45},
        {"name": "eval", "alpha": 0.5, "count": 7},
    ],
    "resources": {"models_per_task": 4},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A null run of 52 models in 13 shards of 4 (written once, copied per test)."""
    out = tmp_path_factory.mktemp("compact") / "run"
    api.train(config_from_dict(NULL_RUN), str(out), executor=SerialExecutor(), show_progress=False)
    assert len(Run(str(out)).shard_files()) == 13
    return out


@pytest.fixture
def run(trained, tmp_path) -> Run:
    shutil.copytree(trained, tmp_path / "run")
    return Run(str(tmp_path / "run"))


def _rows(run: Run):
    table = run.models()
    return table.drop_columns(["worker"]).to_pydict() | {"n": table.num_rows}


def test_compact_merges_shards_and_keeps_every_row(run, trained):
    before = _rows(Run(str(trained)))
    summary = api.compact(run, target_rows=20)
    assert (summary.shards_before, summary.shards_after, summary.merged) == (13, 3, 3)
    assert summary.models == PLANNED
    assert _rows(run) == before
    assert verify(run) == []
    assert not run.fs.exists(COMPACTING_DIR)
    again = api.compact(run, target_rows=20)  # nothing left to merge
    assert (again.shards_after, again.merged) == (3, 0)
    # a resumed train finds every model stored
    summary = api.train(
        config_from_dict(NULL_RUN), run, executor=SerialExecutor(), show_progress=False
    )
    assert summary.trained == 0


def _crash(*args, **kwargs):
    raise RuntimeError("crash")


def _stash_one_then_crash(fs, folder, sources):
    fs.move(f"models/{sources[0]}", f"{folder}/old/{sources[0]}")
    raise RuntimeError("crash")


def _publish_then_crash(fs, path, merged):
    fs.move(path, f"models/{merged}")
    raise RuntimeError("crash")


@pytest.mark.parametrize(
    "step, replacement",
    [
        ("write_merged", _crash),
        ("check_merged", _crash),
        ("write_journal", _crash),
        ("stash_sources", _stash_one_then_crash),
        ("stash_sources", _crash),
        ("publish", _crash),
        ("publish", _publish_then_crash),
        ("_clean", _crash),
    ],
)
def test_a_crash_at_any_step_loses_nothing_and_shows_no_duplicate(
    run, trained, monkeypatch, step, replacement
):
    before = _rows(Run(str(trained)))
    with monkeypatch.context() as patch:
        patch.setattr(compact_module, step, replacement)
        with pytest.raises(RuntimeError, match="crash"):
            api.compact(run, target_rows=20)
    assert not [p for p in verify(run) if p.kind == "duplicate"]
    if hidden_by_compaction(run.fs):  # models stashed by the crash: no reader sees a subset
        for read in (run.model_ids, run.masks, run.stored_model_ids, run.valid_shards):
            with pytest.raises(StoreError, match=r"run `datamodels compact .*` to finish it"):
                read()
        with pytest.raises(StoreError, match="datamodels compact"):
            query(run, "SELECT count(*) FROM models")
        assert [p.kind for p in verify(run)] == ["interrupted"]
        assert "missing from models/" in verify(run)[0].message
    else:  # nothing hidden: every model, once
        ids = run.model_ids()
        assert np.unique(ids).size == ids.size == PLANNED
    summary = api.compact(run, target_rows=20)
    assert _rows(run) == before
    assert verify(run) == []
    assert summary.shards_after == 3


def test_train_recovers_an_interrupted_compaction_instead_of_retraining(run, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(compact_module, "publish", _crash)
        with pytest.raises(RuntimeError):
            api.compact(run, target_rows=20)
    assert hidden_by_compaction(run.fs)
    summary = api.train(
        config_from_dict(NULL_RUN), run, executor=SerialExecutor(), show_progress=False
    )
    assert summary.trained == 0 and len(run.model_ids()) == PLANNED
    assert verify(run) == []


def test_a_foreign_shard_is_left_alone(run):
    shard = run.shard_files()[5]
    table = pq.read_table(run.fs.join("models", shard))
    write_model_shard(run.fs, table, config_hash="another-run")  # same name, foreign now
    summary = api.compact(run, target_rows=20)
    assert shard in run.shard_files()  # untouched
    assert [p.kind for p in verify(run)] == ["foreign"]
    assert summary.skipped and summary.merged == 3 and summary.shards_after == 4


def test_cli_compact(run):
    result = CliRunner().invoke(app, ["compact", run.uri, "--rows", "1000"])
    assert result.exit_code == 0, result.output
    assert "13 -> 1 shards (52 models" in result.output
    assert verify(run) == []


def _copy_then_crash(fs, folder, sources):
    """An object store's move stopped between its copy and its delete (both copies stay)."""
    fs.write_bytes_atomic(f"{folder}/old/{sources[0]}", fs.read_bytes(f"models/{sources[0]}"))
    raise RuntimeError("crash")


@pytest.mark.parametrize("repair", ["compact", "train"])
def test_a_move_stopped_between_copy_and_delete_is_repaired(run, trained, monkeypatch, repair):
    before = _rows(Run(str(trained)))
    with monkeypatch.context() as patch:
        patch.setattr(compact_module, "stash_sources", _copy_then_crash)
        with pytest.raises(RuntimeError, match="crash"):
            api.compact(run, target_rows=20)
    (folder,) = run.fs.entries(COMPACTING_DIR)
    stashed = run.fs.listdir(f"{COMPACTING_DIR}/{folder}/old")
    assert len(stashed) == 1 and stashed[0] in run.shard_files()  # both copies
    if repair == "compact":
        summary = api.compact(run, target_rows=20)
        assert summary.recovered and summary.shards_after == 3
    else:
        summary = api.train(
            config_from_dict(NULL_RUN), run, executor=SerialExecutor(), show_progress=False
        )
        assert summary.trained == 0
    assert _rows(run) == before
    assert verify(run) == []


def test_copies_that_differ_are_refused_naming_both(run, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(compact_module, "stash_sources", _copy_then_crash)
        with pytest.raises(RuntimeError, match="crash"):
            api.compact(run, target_rows=20)
    (folder,) = run.fs.entries(COMPACTING_DIR)
    (name,) = run.fs.listdir(f"{COMPACTING_DIR}/{folder}/old")
    stashed = f"{COMPACTING_DIR}/{folder}/old/{name}"
    data = bytearray(run.fs.read_bytes(stashed))
    data[len(data) // 2] ^= 0xFF
    run.fs.write_bytes_atomic(stashed, bytes(data))
    with pytest.raises(StoreError, match="differ") as refused:
        api.compact(run, target_rows=20)
    assert stashed in str(refused.value) and f"models/{name}" in str(refused.value)
    assert run.fs.isfile(stashed) and name in run.shard_files()  # nothing deleted
