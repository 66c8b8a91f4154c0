"""The run lock on an object store is created atomically (a conditional PUT the store itself
refuses when the lock exists), and a run directory that cannot be written is refused in one
line before any lock file is attempted."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from datamodels.errors import InfrastructureError, RunLockedError
from datamodels.store import Run, RunFS
from datamodels.store import lock as lock_module
from datamodels.store.create import create_if_absent
from datamodels.store.lock import RunLock, read_lock, writer

from .conftest import BUCKET, examples_frame


def _s3_run() -> RunFS:
    return RunFS(f"s3://{BUCKET}/locks/{uuid.uuid4().hex}")


def _race(fs: RunFS, writers: int) -> list[RunLock]:
    """``writers`` threads acquire the lock of ``fs`` at the same instant; the holders."""
    barrier = threading.Barrier(writers)
    holders: list[RunLock] = []
    errors: list[BaseException] = []

    def attempt() -> None:
        lock = RunLock(fs)
        barrier.wait()
        try:
            lock.acquire()
        except RunLockedError:
            return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            return
        holders.append(lock)

    threads = [threading.Thread(target=attempt) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return holders


def test_the_store_honours_the_conditional_create(s3_endpoint):
    fs = _s3_run()
    path = fs.join("probe.json")
    assert create_if_absent(fs.filesystem, path, b"first") is True
    assert create_if_absent(fs.filesystem, path, b"second") is False
    assert fs.read_bytes("probe.json") == b"first"
    assert create_if_absent(RunFS("local-run").filesystem, "x", b"") is None


@pytest.mark.parametrize("writers, trials", [(2, 30), (3, 50)])
def test_writers_starting_together_on_s3_get_exactly_one_holder(s3_endpoint, writers, trials):
    for trial in range(trials):
        fs = _s3_run()
        holders = _race(fs, writers)
        assert len(holders) == 1, f"trial {trial}: {len(holders)} holders"
        assert read_lock(fs)["token"] == holders[0].token
        holders[0].release()
        assert read_lock(fs) is None


def test_a_writer_that_looked_before_another_created_is_still_refused(s3_endpoint, monkeypatch):
    """The lease's failure, made certain: B saw no lock, then A took it, then B writes. A
    read-back lease lets B's later write win (two holders); a conditional create refuses it."""
    fs = _s3_run()
    first = RunLock(fs)
    first.acquire()
    try:
        real_read = lock_module.read_lock
        looked = []

        def stale_look(runfs, path=lock_module.LOCK_PATH):
            if not looked:  # B's look, as it was a moment before A created the lock
                looked.append(path)
                return None
            return real_read(runfs, path)

        monkeypatch.setattr(lock_module, "read_lock", stale_look)
        second = RunLock(fs)
        assert second._try_create() is False
        monkeypatch.setattr(lock_module, "read_lock", real_read)
        assert read_lock(fs)["token"] == first.token
    finally:
        first.release()


def test_a_superseded_holders_heartbeat_leaves_its_successors_lock_alone(s3_endpoint, monkeypatch):
    """A reads its own lock for a heartbeat and stalls; B takes the stale lock over; A's
    heartbeat write then lands. Unconditional, it would put A's token back over B's lock;
    conditional on the ETag A last wrote, the store refuses it and A learns it was superseded."""
    fs_a = _s3_run()
    fs_b = RunFS(fs_a.uri)
    reached, taken = threading.Event(), threading.Event()
    real_read = lock_module.read_lock
    own: list[dict] = []

    def stalled_look(runfs, path=lock_module.LOCK_PATH):
        if threading.current_thread().name == "datamodels-run-lock" and not taken.is_set():
            reached.set()
            taken.wait(30)
            return dict(own[0])  # A's lock as A read it, a moment before the takeover
        return real_read(runfs, path)

    a = RunLock(fs_a)
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    with monkeypatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: "host-a")  # another host: no pid check
        a.acquire()
    own.append(real_read(fs_a))
    fs_a.fence = (a.path, a.token)
    b = RunLock(fs_b)
    try:
        monkeypatch.setattr(lock_module, "read_lock", stalled_look)
        assert reached.wait(30)  # A's heartbeat has read its lock and stalls
        monkeypatch.setattr(lock_module, "HEARTBEAT_S", 3600.0)
        monkeypatch.setattr(lock_module, "STALE_S", 0.0)  # A's heartbeat looks stopped
        b.acquire()  # B takes the stale lock over
        assert real_read(fs_b)["token"] == b.token
        taken.set()  # A wakes up and writes its heartbeat
        a._thread.join(timeout=20)
        assert real_read(fs_b)["token"] == b.token  # B still holds the run
        assert a.superseded and not a._thread.is_alive()
        with pytest.raises(RunLockedError, match="no longer holds"):
            fs_a.write_bytes_atomic("x.json", b"{}")  # A's next write meets the fence
        a.release()  # A's release leaves B's lock alone too
        assert real_read(fs_b)["token"] == b.token
    finally:
        taken.set()
        b.release()
    assert real_read(fs_b) is None


# -- a run directory that cannot be written -------------------------------------------------

CLI = "import sys; from datamodels.cli import app; sys.argv[0] = 'datamodels'; app()"


def _read_only_command(directory: str, command: list[str]) -> list[str] | None:
    """``command`` run where ``directory`` cannot be written: chmod for a user, a read-only
    bind mount in a mount namespace of its own for root (None when neither is available)."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o555)
        return command
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {directory} {directory} && "
         f"mount -o remount,bind,ro {directory}"],
        capture_output=True,
    )  # fmt: skip
    if probe.returncode != 0:
        return None
    where = shlex.quote(directory)
    script = (
        f"mount --bind {where} {where} && mount -o remount,bind,ro {where} && "
        f"exec {shlex.join(command)}"
    )
    return ["unshare", "-m", "sh", "-c", script]


def test_a_read_only_run_directory_is_refused_in_one_line(tmp_path):
    directory = tmp_path / "run"
    run = Run(directory)
    run.write_config("seed: 0\n")
    run.write_examples(examples_frame())
    before = sorted(os.listdir(directory))
    command = _read_only_command(
        str(directory), [sys.executable, "-c", CLI, "compact", str(directory)]
    )
    if command is None:
        pytest.skip("no way to make a read-only directory here (root without mount namespaces)")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )  # fmt: skip
    finally:
        os.chmod(directory, 0o755)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not writable" in lines[0] and str(directory) in lines[0]
    assert sorted(os.listdir(directory)) == before


def test_the_probe_comes_before_the_lock(tmp_path, monkeypatch):
    """The writability probe runs first: a failing probe leaves no lock file behind."""
    fs = RunFS(tmp_path / "run")

    def refuse(subdir: str) -> None:
        raise InfrastructureError(f"{fs.display(subdir)} is not writable (test)")

    monkeypatch.setattr(fs, "check_writable", refuse)
    with pytest.raises(InfrastructureError, match="not writable"):
        with writer(fs):
            pass
    assert not (tmp_path / "run" / "_lock.json").exists()
