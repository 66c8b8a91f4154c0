"""Failures that must be reported as failures, and machine failures that must not cost a
model its attempts."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datamodels.api import train
from datamodels.cli import app
from datamodels.config import config_from_dict
from datamodels.errors import InfrastructureError
from datamodels.orchestrate import train_task
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.stages import train as train_stage
from datamodels.store import Run, RunFS
from tests.conftest import SMALL_DIGITS, digits_default_core

pytestmark = pytest.mark.usefixtures("array_store")  # runs hold data/examples.npy
CONFIGS = Path(__file__).parents[2] / "configs"


def _config(*overrides):
    return config_from_dict(
        SMALL_DIGITS, ["plans.train.count=12", "plans.eval.count=4", *overrides]
    )


def test_train_exits_non_zero_when_models_failed_for_good(tmp_path, monkeypatch):
    from datamodels.orchestrate.executor import EXECUTOR_ENV

    monkeypatch.setenv(EXECUTOR_ENV, "local")  # the command's accounting, in this process
    out = tmp_path / "run"
    args = [
        "train",
        str(digits_default_core(tmp_path)),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "plans.train.count=6",
        "--set",
        "plans.eval.count=2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.lr=1e30",
        "--set",
        "resources.max_attempts=1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "train: 8 models failed for good" in result.output
    assert len(Run(str(out)).failures()) == 8
    # --retry-failed gives them a fresh budget (they fail again here, and say so again)
    again = CliRunner().invoke(app, [*args, "--retry-failed"])
    assert again.exit_code == 1 and len(Run(str(out)).failures()) == 8
    assert list((out / "_failures").glob("cleared-*.parquet"))


def test_a_full_disk_stops_training_without_spending_attempts(tmp_path, monkeypatch):
    real = train_stage.TrainStage.write_shard

    def disk_full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_stage.TrainStage, "write_shard", disk_full)
    out = str(tmp_path / "run")
    with pytest.raises(InfrastructureError, match="No space left on device.*no model's attempt"):
        train(_config(), out, executor=SerialExecutor(), show_progress=False)
    assert len(Run(out).failures()) == 0
    monkeypatch.setattr(train_stage.TrainStage, "write_shard", real)  # space freed
    summary = train(_config(), out, executor=SerialExecutor(), show_progress=False)
    assert summary.trained == 16 and summary.failed == 0


def test_a_lost_worker_is_retried_without_spending_attempts(tmp_path, monkeypatch):
    real = train_stage.TrainStage.write_shard
    lost: list[int] = []

    def flaky_connection(self, *args):
        if len(lost) < 2:
            lost.append(1)
            raise ConnectionResetError("connection to the object store reset")
        return real(self, *args)

    monkeypatch.setattr(train_stage.TrainStage, "write_shard", flaky_connection)
    out = str(tmp_path / "run")
    summary = train(
        _config("resources.max_attempts=1"), out, executor=SerialExecutor(), show_progress=False
    )
    assert summary.trained == 16 and summary.failed == 0 and len(Run(out).failures()) == 0


def test_an_unwritable_run_directory_is_refused_before_training(tmp_path, monkeypatch):
    real = RunFS.write_bytes_atomic

    def read_only(self, rel_path, data):
        if rel_path.startswith("models/"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, rel_path, data)

    monkeypatch.setattr(RunFS, "write_bytes_atomic", read_only)
    calls: list[int] = []
    monkeypatch.setattr(train_task, "train_batch", lambda *a, **k: calls.append(1))
    with pytest.raises(InfrastructureError, match="models is not writable .*Read-only file system"):
        train(_config(), str(tmp_path / "run"), executor=SerialExecutor(), show_progress=False)
    assert not calls  # nothing was trained


def test_status_and_query_flag_a_model_stored_twice(tmp_path):
    import shutil

    out = tmp_path / "run"
    train(_config(), str(out), executor=SerialExecutor(), show_progress=False)
    first = sorted((out / "models").glob("*.parquet"))[0]
    shutil.copy(first, out / "models" / "part-copy.parquet")  # the same models, twice
    status = CliRunner().invoke(app, ["status", str(out)])
    assert status.exit_code == 0 and "warning: " in status.output and "duplicate" in status.output
    assert " 12 " in status.output  # done counts each model once
    query = CliRunner().invoke(app, ["query", str(out), "SELECT count(*) AS n FROM models"])
    assert query.exit_code == 2 and "models view refused" in query.output


def test_out_of_memory_batches_are_halved_without_spending_attempts(tmp_path, monkeypatch):
    real = train_task.train_batch
    sizes: list[int] = []

    def small_memory(masks, seeds, *args, **kwargs):  # more than 4 models at once do not fit
        sizes.append(len(seeds))
        if len(seeds) > 4:
            raise MemoryError("out of memory")
        return real(masks, seeds, *args, **kwargs)

    monkeypatch.setattr(train_task, "train_batch", small_memory)
    out = str(tmp_path / "run")
    summary = train(
        _config("resources.max_attempts=1"), out, executor=SerialExecutor(), show_progress=False
    )
    assert summary.trained == 16 and summary.failed == 0 and len(Run(out).failures()) == 0
    assert max(sizes) == 16 and min(sizes) <= 4


def test_a_model_that_always_crashes_its_worker_fails_for_good(tmp_path, monkeypatch):
    real = train_task.train_batch
    planned_seed = {}

    def crash_on_one(masks, seeds, *args, **kwargs):
        if planned_seed["bad"] in seeds:
            raise MemoryError("killed")
        return real(masks, seeds, *args, **kwargs)

    from datamodels.plans import plan_models

    config = _config("resources.max_attempts=2")
    planned_seed["bad"] = int(plan_models(config, 1438).seed[5])
    monkeypatch.setattr(train_task, "train_batch", crash_on_one)
    out = str(tmp_path / "run")
    summary = train(config, out, executor=SerialExecutor(), show_progress=False)
    run = Run(out)
    assert summary.trained == 15 and summary.failed == 1
    assert set(run.failures()["model_id"]) == {5} and 5 not in run.model_ids().tolist()
