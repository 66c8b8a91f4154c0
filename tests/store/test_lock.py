"""One writer per run directory: a second writer is refused by name, a dead one's lock is
taken over, and the lock is re-entrant within a process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from datamodels.errors import RunLockedError
from datamodels.store import RunFS
from datamodels.store.lock import LOCK_PATH, STALE_S, read_lock, writer

HOLD = """
import sys, time
from datamodels.store import RunFS
from datamodels.store.lock import writer
with writer(RunFS(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    from datamodels import api
    from datamodels.config import config_from_dict

    proc = _holder(tmp_path / "run")
    try:
        config = config_from_dict({"dataset": {"name": "digits", "limit_train": 40}})
        with pytest.raises(RunLockedError, match=rf"being written by .*pid {proc.pid}"):
            api.train(config, str(tmp_path / "run"), show_progress=False)
        assert not (tmp_path / "run" / "config.yaml").exists()  # the refused writer wrote nothing
    finally:
        proc.kill()
        proc.wait()
    # its holder is dead (same host): the lock is taken over at once
    with writer(RunFS(str(tmp_path / "run"))):
        assert read_lock(RunFS(str(tmp_path / "run")))["pid"] != proc.pid
    assert not (tmp_path / "run" / LOCK_PATH).exists()  # released


def test_a_lock_whose_heartbeat_stopped_is_taken_over(tmp_path):
    fs = RunFS(str(tmp_path / "run"))
    fresh = {
        "token": "x",
        "user": "u",
        "host": "elsewhere",
        "pid": 1,
        "command": "datamodels train",
        "started": time.time(),
        "heartbeat": time.time(),
    }
    fs.write_bytes_atomic(LOCK_PATH, json.dumps(fresh).encode())
    with pytest.raises(RunLockedError, match="u@elsewhere pid 1"):  # alive elsewhere: refused
        with writer(fs):
            pass
    stale = {**fresh, "heartbeat": time.time() - STALE_S - 5}
    fs.write_bytes_atomic(LOCK_PATH, json.dumps(stale).encode())
    with writer(fs):
        assert read_lock(fs)["host"] == socket.gethostname()


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    fs = RunFS(str(tmp_path / "run"))
    with writer(fs):
        token = read_lock(fs)["token"]
        with writer(fs):
            assert read_lock(fs)["token"] == token
        assert read_lock(fs)["token"] == token  # still held by the outer block
    assert read_lock(fs) is None


def test_a_live_holder_on_this_host_keeps_the_lock_however_old_its_heartbeat(tmp_path):
    import os

    fs = RunFS(str(tmp_path / "run"))
    paused = {
        "token": "t",
        "user": "u",
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "command": "datamodels train",
        "started": 0.0,
        "heartbeat": 0.0,
    }  # Ctrl-Z'd
    fs.write_bytes_atomic(LOCK_PATH, json.dumps(paused).encode())
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        with writer(fs):
            pass


def test_a_torn_lock_file_is_taken_over_once_stale(tmp_path):
    import os

    fs = RunFS(str(tmp_path / "run"))
    fs.write_bytes_atomic(LOCK_PATH, b"")  # its writer died between create and write
    with pytest.raises(RunLockedError, match="does not parse"):
        with writer(fs):
            pass
    old = time.time() - STALE_S - 5
    os.utime(fs.join(LOCK_PATH), (old, old))
    with writer(fs):
        assert read_lock(fs)["pid"] == os.getpid()


def test_another_thread_of_the_same_process_is_refused(tmp_path):
    import threading

    fs = RunFS(str(tmp_path / "run"))
    errors = []

    def second_writer():
        try:
            with writer(fs):
                pass
        except RunLockedError as err:
            errors.append(err)

    with writer(fs):
        thread = threading.Thread(target=second_writer)
        thread.start()
        thread.join()
    assert len(errors) == 1
