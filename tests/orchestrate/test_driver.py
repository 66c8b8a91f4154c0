"""The Ray driver end to end on small digits runs: schema, resume, failures, torn shards."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodels.api import train
from datamodels.config import config_from_dict
from datamodels.orchestrate import train_task
from datamodels.orchestrate.executor import SerialExecutor
from datamodels.plans import masks_for, plan_models
from datamodels.stages import train as train_stage
from datamodels.stages.status import plan_status
from datamodels.store import Run, query, verify
from tests.conftest import SMALL_DIGITS, digits_default_core

pytestmark = pytest.mark.usefixtures("array_store")  # runs hold data/examples.npy
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


def _config(*overrides):
    return config_from_dict(SMALL_DIGITS, list(overrides))


def _shards(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "models").glob("*.parquet"))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, ray_local):
    """(config, path, summary): the SMALL_DIGITS run trained once through Ray, for tests that
    read it; a test that writes works on a copy (`_copy`)."""
    config = _config()
    out = tmp_path_factory.mktemp("small") / "run"
    return config, out, train(config, str(out), show_progress=False)


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_train_writes_the_contract_tables(small_run, tmp_path):
    config, out, summary = small_run
    planned = plan_models(config, 1438)
    assert summary.trained == len(planned) == 48
    run = Run(str(out))
    n_train, n_eval = run.sizes()
    assert (n_train, n_eval) == (1438, 1797)

    schema = pq.read_schema(_shards(out)[0])
    for name, dtype in MODEL_COLUMNS.items():
        assert schema.field(name).type == dtype, name
    assert schema.field("mask").type == pa.list_(pa.bool_(), n_train)
    assert schema.field("margins").type == pa.list_(pa.float32(), n_eval)
    assert schema.metadata[b"schema_version"] == b"3"
    examples = pq.read_table(out / "examples.parquet")
    assert (
        examples.schema.field("index").type == pa.int64()
        and examples.schema.field("split").type == pa.string()
    )
    assert set(examples.column("split").to_pylist()) == {"train", "test"}

    ids = run.model_ids()
    assert ids.tolist() == planned.model_id.tolist()  # unique and complete
    masks = run.masks()
    np.testing.assert_array_equal(masks, masks_for(config, planned, n_train))
    sd = np.sqrt(0.25 / masks.size)
    assert abs(masks.mean() - 0.5) < 5 * sd
    train_rows = (
        run.models(plan="train", columns=["eval_accuracy"]).column("eval_accuracy").to_numpy()
    )
    assert len(train_rows) == 40 and train_rows.mean() > 0.85
    assert verify(run) == []

    # the README's query example, verbatim, against numpy
    import duckdb

    got = duckdb.sql(
        "SELECT mask[43] AS included, avg(margins[18]) AS m "
        f"FROM '{out}/models/*.parquet' GROUP BY 1 ORDER BY 1"
    ).fetchall()
    margins = run.margins()
    for included, mean in got:
        np.testing.assert_allclose(mean, margins[masks[:, 42] == included, 17].mean(), rtol=1e-5)
    frame = query(run, "SELECT plan, count(*) AS n FROM models GROUP BY plan ORDER BY plan")
    assert frame.to_dict("list") == {"plan": ["eval", "train"], "n": [8, 40]}

    assert [p.name for p in _shards(out)] == sorted(p.name for p in _shards(out))
    copy = _copy(out, tmp_path)
    again = train(config, str(copy), show_progress=False)  # resume: nothing left to do
    assert again.trained == 0 and again.already_done == 48


def test_nan_models_land_in_failures(tmp_path, monkeypatch):
    config = _config(
        "resources.max_attempts=2", "plans.train.count=20", "plans.eval.count=4", "train.epochs=2"
    )
    planned = plan_models(config, 1438)
    poisoned_seeds = planned.seed[[3, 21]]  # one model of each plan
    real = train_task.train_batch

    def diverging(masks, seeds, *args, **kwargs):  # models 3 and 21 diverge on every attempt
        outcome = real(masks, seeds, *args, **kwargs)
        bad = np.isin(seeds, poisoned_seeds)
        outcome.train_loss[bad] = np.nan
        outcome.failed |= bad
        return outcome

    monkeypatch.setattr(train_task, "train_batch", diverging)
    out = tmp_path / "run"
    summary = train(config, str(out), executor=SerialExecutor(), show_progress=False)
    run = Run(str(out))
    assert summary.trained == 22 and summary.failed == 2
    failures = run.failures()
    assert sorted(failures["model_id"].tolist()) == [3, 3, 21, 21]
    assert sorted(failures["attempt"].tolist()) == [1, 1, 2, 2]
    assert set(failures["error_type"]) == {"NonFiniteLoss"}
    assert set(failures["plan"]) == {"train", "eval"}
    assert set(run.model_ids().tolist()) == set(range(24)) - {3, 21}
    status = plan_status(config, run).set_index("plan")
    assert status.loc["train", "failed"] == 1 and status.loc["eval", "failed"] == 1
    assert status["missing"].sum() == 0
    # a resumed run does not spend more attempts on them
    assert train(config, str(out), executor=SerialExecutor(), show_progress=False).trained == 0
    assert len(run.failures()) == 4


def test_a_task_that_raises_spends_attempts_and_retries_smaller(tmp_path, monkeypatch):
    config = _config(
        "resources.max_attempts=3", "plans.train.count=20", "plans.eval.count=4", "train.epochs=2"
    )
    real = train_task.train_batch
    calls: list[int] = []

    def flaky(masks, seeds, *args, **kwargs):  # the first two calls crash, as a bug or OOM would
        calls.append(len(seeds))
        if len(calls) <= 2:
            raise RuntimeError("simulated crash")
        return real(masks, seeds, *args, **kwargs)

    monkeypatch.setattr(train_task, "train_batch", flaky)
    out = tmp_path / "run"
    summary = train(config, str(out), executor=SerialExecutor(), show_progress=False)
    run = Run(str(out))
    assert summary.failed == 0 and summary.trained == 24
    assert run.model_ids().tolist() == list(range(24))  # every model exactly once
    failures = run.failures()
    assert set(failures["error_type"]) == {"RuntimeError"} and set(failures["attempt"]) == {1}
    assert calls[2] < calls[0]  # a failed batch is retried in smaller batches


def test_truncated_shard_is_named_and_retrained(small_run, tmp_path):
    config, trained, _ = small_run
    out = _copy(trained, tmp_path)
    victim = _shards(out)[1]
    lost_ids = pq.read_table(victim, columns=["model_id"]).column("model_id").to_pylist()
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    problems = verify(Run(str(out)))
    assert [(p.kind, Path(p.file).name) for p in problems] == [("torn", victim.name)]
    summary = train(config, str(out), show_progress=False)
    assert summary.trained == len(lost_ids) and summary.quarantined
    run = Run(str(out))
    assert run.model_ids().tolist() == list(range(48))
    assert verify(run) == []
    assert (out / "models" / "_invalid").is_dir()  # kept, not deleted


def _train_shard_workers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "ray::compute_unit" in cmd:
            found.append(proc)
    return found


@pytest.mark.slow  # races a worker process
def test_worker_killed_mid_training(tmp_path, ray_local):
    config = _config(
        "plans.train.count=60", "resources.models_per_task=6", "resources.trainer=sequential"
    )
    out = tmp_path / "run"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for proc in _train_shard_workers():
                try:
                    proc.kill()
                    killed.append(proc.pid)
                except psutil.NoSuchProcess:
                    continue
                break
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    train(config, str(out), show_progress=False)
    thread.join(timeout=5)
    assert killed, "no train_shard worker process was seen"
    run = Run(str(out))
    ids = run.model_ids()
    assert len(ids) == len(set(ids.tolist())) == 68
    assert verify(run) == []


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (the local Ray cluster of a driver,
    its workers included), and wait until all of them are gone: nothing of the killed run
    can write after this returns."""
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(tree, timeout=60)


def test_driver_sigkill_then_resume(tmp_path, ray_local):
    """Kill the driver (and the cluster it started) mid-run, resume: every planned model is
    stored exactly once, no shard is torn, and the shards written before the kill are kept."""
    import subprocess
    import sys

    out = tmp_path / "run"
    overrides = [
        "plans.train.count=16",
        "plans.eval.count=4",
        "train.epochs=1",
        "resources.models_per_task=4",
        "resources.trainer=sequential",
    ]
    config_path = digits_default_core(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "datamodels.cli",
        "train",
        str(config_path),
        "--out",
        str(out),
        "--quiet",
    ]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _shards(out):
        time.sleep(0.1)
    assert _shards(out) or proc.poll() is None, proc.stderr.read().decode()[-2000:]
    _kill_tree(proc.pid)
    proc.wait()
    said = proc.stderr.read().decode()
    # a local cluster is the driver's own: Ray's token warning is never printed
    assert "Token authentication" not in said and "RAY_AUTH_MODE" not in said, said[-2000:]
    before = {p.name: p.stat().st_mtime_ns for p in _shards(out)}
    done_before = len(Run(str(out)).model_ids())
    from datamodels.config import load_config

    summary = train(load_config(config_path, overrides), str(out), show_progress=False)
    assert summary.already_done == done_before and summary.trained == 20 - done_before
    after = {p.name: p.stat().st_mtime_ns for p in _shards(out)}
    assert all(after[name] == mtime for name, mtime in before.items())  # finished shards untouched
    run = Run(str(out))
    assert run.model_ids().tolist() == list(range(20))
    assert verify(run) == []


def test_loo_alpha_grid_and_tmc_plans(tmp_path, ray_local):
    config = config_from_dict(
        {
            "dataset": {"name": "digits", "limit_train": 8, "limit_test": 30},
            "model": {"arch": "logreg"},
            "train": {"weight_decay": 0.05},
            "plans": [
                {"name": "loo", "kind": "loo"},
                {"name": "grid", "kind": "alpha_grid", "levels": 3, "count": 4},
                {"name": "walks", "kind": "tmc", "count": 3, "tolerance": 0.0, "patience": 2},
            ],
            "resources": {"models_per_task": 4},
        }
    )
    out = tmp_path / "run"
    train(config, str(out), show_progress=False)
    run = Run(str(out))
    status = plan_status(config, run).set_index("plan")
    assert status.loc["loo", "done"] == 9 and status.loc["grid", "done"] == 12
    assert status.loc["walks", "planned"] == 3 and status.loc["walks", "done"] == 3
    assert status["missing"].sum() == 0
    loo_masks = run.masks(plan="loo")
    assert sorted((~loo_masks).sum(1).tolist()) == [0] + [1] * 8
    walks = run.models(plan="walks", columns=["model_id", "mask"])
    ids = np.asarray(walks.column("model_id").to_pylist())
    perm, step = np.divmod(ids - ids.min(), 9)
    for p in range(3):
        steps = sorted(step[perm == p].tolist())
        assert 8 in steps  # the full-data model that sets the truncation target
        prefix = [s for s in steps if s < 8]
        assert prefix == list(range(len(prefix))) and len(prefix) >= 2
    assert train(config, str(out), show_progress=False).trained == 0


def test_shipped_cifar10_config_on_a_generated_archive(tmp_path, ray_local):
    from datamodels.config import load_config
    from tests.conftest import write_cifar_archive

    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", n_per_batch=8, n_test=10)
    config = load_config(
        Path(__file__).parents[2] / "configs" / "cifar10.yaml",
        [
            f"dataset.path={archive}",
            "model.width=8",
            "train.epochs=1",
            "train.batch_size=16",
            "plans.train.count=3",
            "plans.eval.count=1",
            "resources.num_gpus=0",
            "resources.num_cpus=1",
            "resources.device=cpu",
            "resources.models_per_task=2",
        ],
    )
    out = tmp_path / "run"
    summary = train(config, str(out), show_progress=False)
    assert summary.trained == 3 + 2  # the eval plan trains 2 seeds per mask
    run = Run(str(out))
    assert run.sizes() == (40, 50)
    assert np.isfinite(run.margins()).all() and verify(run) == []


def test_a_lost_receipt_never_stores_a_model_twice(tmp_path, monkeypatch):
    """A task that dies after its shard was renamed into place (the driver never hears back):
    its models are found in models/ and neither retried nor counted as failures."""
    config = _config(
        "plans.train.count=20", "plans.eval.count=4", "resources.max_attempts=3", "train.epochs=2"
    )
    real = train_stage.TrainStage.write_shard
    deaths: list[int] = []

    def write_then_die(self, planned, *args):
        real(self, planned, *args)
        if not deaths:
            deaths.append(len(planned))
            raise OSError("connection to the worker lost")

    monkeypatch.setattr(train_stage.TrainStage, "write_shard", write_then_die)
    out = tmp_path / "run"
    summary = train(config, str(out), executor=SerialExecutor(), show_progress=False)
    run = Run(str(out))
    assert deaths and summary.trained == 24 and summary.failed == 0
    assert run.model_ids().tolist() == list(range(24))  # every model exactly once
    assert len(run.failures()) == 0 and verify(run) == []


def test_a_walk_with_a_failed_model_is_not_walked_twice(tmp_path, monkeypatch):
    """A tmc walk writes its shard even when one prefix model diverged; walking it again would
    store the same ids twice."""
    config = config_from_dict(
        {
            "dataset": {"name": "digits", "limit_train": 8, "limit_test": 30},
            "model": {"arch": "logreg"},
            "train": {"weight_decay": 0.05},
            "plans": [
                {"name": "walks", "kind": "tmc", "count": 2, "tolerance": 0.0, "patience": 2}
            ],
            "resources": {"models_per_task": 4, "max_attempts": 3},
        }
    )
    real = train_task.train_batch
    calls = {"n": 0}

    def one_divergence(masks, seeds, *args, **kwargs):
        outcome = real(masks, seeds, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the first prefix chunk of the first walk
            outcome.failed[0], outcome.train_loss[0] = True, np.nan
        return outcome

    monkeypatch.setattr(train_task, "train_batch", one_divergence)
    out = tmp_path / "run"
    train(config, str(out), executor=SerialExecutor(), show_progress=False)
    run = Run(str(out))
    assert verify(run) == []  # no duplicate ids
    assert len(_shards(out)) == 2 and len(run.failures()) == 1
    assert plan_status(config, run).set_index("plan").loc["walks", "done"] == 2
