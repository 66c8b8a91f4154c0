"""Fencing after a stale lock takeover: a writer presumed dead (paused on another host, its
heartbeat stopped) that wakes up after a second writer took the run over writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from datamodels.errors import RunLockedError
from datamodels.store import Run, models_table, write_model_shard
from datamodels.store.lock import read_lock, writer

from .conftest import examples_frame

# Writer A: "host-a", heartbeats that never come; holds the lock, writes a table, says so,
# waits (the test pauses it with SIGSTOP), then tries a table and a model shard.
WRITER_A = r"""
import socket, sys
import numpy as np
socket.gethostname = lambda: "host-a"
from datamodels.store import lock
lock.HEARTBEAT_S = 3600.0
from datamodels.errors import RunLockedError
from datamodels.store import Run, models_table, write_model_shard
from tests.store.conftest import examples_frame
run = Run(sys.argv[1])
with lock.writer(run.fs):
    run.write_examples(examples_frame())
    print("held", flush=True)
    sys.stdin.readline()
    for write in (
        lambda: None,
        lambda: run.append_failures(run.failures()),
        lambda: write_model_shard(run.fs, models_table(
            np.arange(3), "a", 0.5, np.arange(3), np.ones((3, 50), bool),
            np.zeros((3, 20), np.float32), 0.1, 0.9, 1.0, 1, "a")),
    ):
        try:
            write()
        except RunLockedError as err:
            print(f"refused: {err}", flush=True)
        else:
            print("wrote", flush=True)
"""


def test_a_superseded_writer_writes_nothing_after_the_takeover(tmp_path, monkeypatch):
    directory = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    a = subprocess.Popen(
        [sys.executable, "-c", WRITER_A, str(directory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert a.stdout.readline().strip() == "held", a.stderr.read()
        os.kill(a.pid, signal.SIGSTOP)  # frozen: its lock looks dead from here
        monkeypatch.setattr("datamodels.store.lock.STALE_S", 0.5)
        time.sleep(1.0)
        run = Run(directory)
        with writer(run.fs):  # B takes the stale lock over and writes
            assert read_lock(run.fs)["host"] != "host-a"
            ids = np.arange(10, 13)
            b_shard = write_model_shard(run.fs, models_table(
                ids, "b", 0.5, ids, np.ones((3, 50), bool), np.zeros((3, 20), np.float32),
                0.1, 0.9, 1.0, 1, "b"))[0]  # fmt: skip
            os.kill(a.pid, signal.SIGCONT)
            out, err = a.communicate("go\n", timeout=120)
            lines = [line for line in out.splitlines() if line]
            assert lines[0] == "wrote"  # the no-op
            refusals = lines[1:]
            assert len(refusals) == 2 and all(line.startswith("refused: ") for line in refusals)
            assert all("no longer holds" in line and "_lock.json" in line for line in refusals)
            assert read_lock(run.fs)["host"] != "host-a"  # B still holds the run
            assert run.shard_files() == [b_shard.split("/")[-1]]
            assert not (directory / "failures.parquet").exists()
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.wait()


def test_the_holder_itself_writes_and_the_fence_is_cleared_on_release(tmp_path):
    run = Run(tmp_path / "run")
    with writer(run.fs):
        assert run.fs.fence is not None
        with writer(run.fs):  # re-entrant: the same fence
            run.write_examples(examples_frame())
        assert run.fs.fence is not None
        run.fs.filesystem.delete_file(run.fs.join("_lock.json"))  # as a takeover removes it
        with pytest.raises(RunLockedError, match="no longer holds"):
            run.write_examples(examples_frame())
    assert run.fs.fence is None
    run.write_examples(examples_frame())  # no lock held: readers' and tests' writes go on
