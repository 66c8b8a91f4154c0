"""``train --shard I/N``: Ray-free shard workers split the missing models by ``model_id % N``,
write the shards a Ray run writes, run side by side under the shared run lock, and finish a
run that Ray (or other shard workers) started."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from datamodels import api
from datamodels.config import config_from_dict
from datamodels.errors import ConfigError, RunLockedError
from datamodels.store import Run, RunFS, verify
from datamodels.store.lock import writer

NULL_RUN = {
    "name": "digits_null_shards",
    "dataset": {"name": "digits", "limit_train": 200, "limit_test": 40},
    "model": {"arch": "null"},
    "plans": [
        {"name": "train", "alpha": 0.5, "count": 45},
        {"name": "eval", "alpha": 0.5, "count": 7},
    ],
    "resources": {"models_per_task": 26},  # a Ray run of the 52 models: two tasks
}


def _config(*overrides):
    return config_from_dict(NULL_RUN, list(overrides))


def _assert_complete(run: Run, planned: int) -> None:
    assert verify(run) == []
    ids = run.model_ids()
    assert ids.tolist() == list(range(planned))  # every planned model exactly once


def test_three_shards_one_after_another_equal_a_ray_run(tmp_path, ray_local):
    config = _config()
    out = str(tmp_path / "shards")
    trained = []
    for index in range(3):
        summary = api.train(config, out, shard=f"{index}/3", show_progress=False)
        trained.append(summary.trained)
        mine = Run(out).model_ids()
        assert all(i % 3 <= index for i in mine.tolist())  # only shards 0..index so far
    assert sum(trained) == 52 and trained == [18, 17, 17]
    again = api.train(config, out, shard="1/3", show_progress=False)
    assert again.trained == 0 and again.already_done == 17
    _assert_complete(Run(out), 52)

    ray_out = str(tmp_path / "ray")
    assert api.train(config, ray_out, show_progress=False).trained == 52
    by_shards, by_ray = Run(out), Run(ray_out)
    np.testing.assert_array_equal(by_shards.masks(), by_ray.masks())
    np.testing.assert_array_equal(by_shards.margins(), by_ray.margins())


def test_ray_finishes_what_shard_workers_started(tmp_path, ray_local):
    config = _config()
    out = str(tmp_path / "run")
    api.train(config, out, shard="0/4", show_progress=False)
    summary = api.train(config, out, show_progress=False)
    assert summary.already_done == 13 and summary.trained == 39
    _assert_complete(Run(out), 52)


def test_two_shard_workers_at_once_on_a_fresh_run(tmp_path):
    config_path = tmp_path / "null.yaml"
    config_path.write_text(yaml.safe_dump(NULL_RUN))
    out = tmp_path / "run"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "datamodels.cli", "train", str(config_path), "--out",
             str(out), "--shard", f"{index}/2", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in range(2)
    ]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    _assert_complete(Run(str(out)), 52)
    assert not list((out / "_locks").glob("*.json"))  # both shared locks released


@pytest.mark.parametrize("shard", ["3/3", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_is_one_line(tmp_path, shard):
    with pytest.raises(ConfigError, match=r"expected I/N with 0 <= I < N \(0-based"):
        api.train(_config(), str(tmp_path / "run"), shard=shard, show_progress=False)


def test_shard_workers_share_the_lock_and_exclude_an_exclusive_writer(tmp_path):
    fs = RunFS(str(tmp_path / "run"))
    with writer(fs, shared=True):
        # another thread stands for another shard worker: shared locks coexist
        import threading

        errors = []

        def second_shard_then_exclusive():
            try:
                with writer(fs, shared=True):
                    pass
            except Exception as err:  # noqa: BLE001
                errors.append(err)
            try:
                with writer(fs):
                    errors.append("exclusive writer was let in")
            except RunLockedError as err:
                errors.append(err)

        thread = threading.Thread(target=second_shard_then_exclusive)
        thread.start()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], RunLockedError)
        assert "shard worker" in str(errors[0])
    with writer(fs):
        outcome = []

        def shard_during_exclusive():
            try:
                with writer(fs, shared=True):
                    outcome.append("shard worker was let in")
            except RunLockedError as err:
                outcome.append(err)

        thread = threading.Thread(target=shard_during_exclusive)
        thread.start()
        thread.join()
        assert isinstance(outcome[0], RunLockedError) and "exclusive writer" in str(outcome[0])
    with writer(fs, shared=True):  # everything released
        pass


def test_a_shard_worker_never_trains_another_shards_model(tmp_path, monkeypatch):
    """The promise behind concurrent array jobs: shard I only ever trains ids = I mod N."""
    from datamodels.stages import train as train_stage

    seen = []
    original = train_stage.TrainStage.train_models

    def spy(self, data, planned, receipt):
        seen.extend(planned.model_id.tolist())
        return original(self, data, planned, receipt)

    monkeypatch.setattr(train_stage.TrainStage, "train_models", spy)
    api.train(_config(), str(tmp_path / "run"), shard="2/5", show_progress=False)
    assert seen and all(i % 5 == 2 for i in seen) and len(seen) == len(set(seen))
    assert sorted(seen) == list(range(2, 52, 5))


def test_a_shard_worker_records_failures_under_the_mutex(tmp_path, monkeypatch):
    from datamodels.trainers import null

    def not_finite(masks, seeds, n_eval, config_seed):
        return np.full((len(masks), n_eval), np.nan, dtype=np.float32)

    monkeypatch.setattr(null, "null_margins", not_finite)
    out = str(tmp_path / "run")
    config = _config("resources.max_attempts=1")
    summary = api.train(config, out, shard="1/2", show_progress=False)
    assert summary.trained == 0 and summary.failed == 26
    failures = Run(out).failures()
    assert sorted(failures["model_id"]) == list(range(1, 52, 2))
    assert not (tmp_path / "run" / "_locks" / "failures.mutex").exists()  # released
