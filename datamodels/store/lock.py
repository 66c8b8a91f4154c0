"""One writer per run directory: ``_lock.json``, held while a stage writes the run.

The lock names its holder (user, host, pid, command, start time) and carries a heartbeat
that a background thread refreshes every ``HEARTBEAT_S`` seconds. A second writer is refused
with one line naming the holder. A lock is stale, and is taken over, when its holder is a
dead process on this host, or when its heartbeat is older than ``STALE_S`` (a holder on
another host that died or lost the run directory). On a local disk the lock file is created
with ``O_EXCL``, so two writers can never both create it; on object stores, which have no
exclusive create here, the lock is a lease object that each writer reads back after writing
it (the later write wins and the loser backs off).

Readers (``status``, ``query``, ``verify``) never take the lock. A process that holds the
lock may take it again (nested stages, ``datamodels run``).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager

from datamodels.errors import RunLockedError
from datamodels.store.fs import RunFS

LOCK_PATH = "_lock.json"
HEARTBEAT_S = 10.0
STALE_S = 60.0

_held: dict[tuple[str, int], tuple[str, int]] = {}  # (run root, thread) -> (token, depth)
_guard = threading.Lock()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(fs: RunFS) -> dict | None:
    """The lock record; None when the run is not locked. A lock file that does not parse (a
    writer died between creating and filling it) reads as ``{"torn": True}`` with its
    modification time as heartbeat, so it turns stale like any other."""
    try:
        raw = fs.read_bytes(LOCK_PATH)
    except Exception:  # noqa: BLE001 - absent (or vanished while read)
        return None
    try:
        record = json.loads(raw)
        if isinstance(record, dict) and "token" in record:
            return record
    except ValueError:
        pass
    try:
        mtime = fs.filesystem.get_file_info(fs.join(LOCK_PATH)).mtime.timestamp()
    except Exception:  # noqa: BLE001
        mtime = 0.0
    return {
        "torn": True,
        "heartbeat": mtime,
        "user": "?",
        "host": "?",
        "pid": "?",
        "command": "a lock file that does not parse",
    }


def is_stale(record: dict, now: float | None = None) -> bool:
    """A holder that is a dead process on this host, or whose heartbeat stopped."""
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and not record.get("torn"):
        # on this host the process table is the truth: a live holder (even one stopped with
        # Ctrl-Z, whose heartbeat paused) keeps the lock; a dead one has lost it
        return not _process_alive(int(record.get("pid", -1)))
    return now - float(record.get("heartbeat", 0)) > STALE_S


def describe(record: dict) -> str:
    age = max(0.0, time.time() - float(record.get("heartbeat", 0)))
    return (
        f"{record.get('user')}@{record.get('host')} pid {record.get('pid')} "
        f"({record.get('command')!s:.60}), heartbeat {age:.0f}s ago"
    )


class RunLock:
    """The exclusive writer lock of one run directory (see the module docstring)."""

    def __init__(self, fs: RunFS) -> None:
        self.fs = fs
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # a heartbeat write and the release never interleave

    def record(self) -> dict:
        now = time.time()
        return {
            "token": self.token,
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(sys.argv[:3]),
            "started": now,
            "heartbeat": now,
        }

    def _create_local(self, payload: bytes) -> bool:
        """Create the lock with its content in one step: a filled temp file hard-linked into
        place (``link`` fails when the lock exists), so no one ever sees an empty lock."""
        path = self.fs.join(LOCK_PATH)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = f"{path}.{self.token}"
        with open(temp, "wb") as handle:
            handle.write(payload)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)
        return True

    def _try_create(self) -> bool:
        payload = json.dumps(self.record()).encode()
        if self.fs.is_local:
            return self._create_local(payload)
        if read_lock(self.fs) is not None:
            return False
        self.fs.write_bytes_atomic(LOCK_PATH, payload)
        time.sleep(0.2)  # a writer racing us overwrites within this window; read back who won
        return (read_lock(self.fs) or {}).get("token") == self.token

    def acquire(self) -> None:
        for _ in range(3):
            if self._try_create():
                self._start_heartbeat()
                return
            holder = read_lock(self.fs)
            if holder is None:
                continue  # released (or torn) between our attempt and the read: try again
            if not is_stale(holder):
                raise RunLockedError(
                    f"{self.fs.display('')} is being written by {describe(holder)}; wait for it to "
                    f"finish (a dead holder's lock is taken over: at once on this host, after "
                    f"{STALE_S:.0f}s without a heartbeat from another)"
                )
            self._remove_if(holder)  # stale: take it over
        raise RunLockedError(f"{self.fs.display(LOCK_PATH)}: could not take the run lock; retry")

    def _remove_if(self, expected: dict) -> None:
        """Delete the lock only if it still holds ``expected`` (as judged a moment ago)."""
        current = read_lock(self.fs)
        same = current is not None and (
            current.get("token") == expected.get("token")
            if "token" in expected
            else current.get("torn") and current.get("heartbeat") == expected.get("heartbeat")
        )
        if same:
            try:
                self.fs.filesystem.delete_file(self.fs.join(LOCK_PATH))
            except FileNotFoundError:
                pass

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with self._writing:
                    if self._stop.is_set():
                        return
                    try:
                        current = read_lock(self.fs)
                        if current is None or current.get("token") != self.token:
                            return  # taken over (we were presumed dead): stop touching it
                        current["heartbeat"] = time.time()
                        self.fs.write_bytes_atomic(LOCK_PATH, json.dumps(current).encode())
                    except OSError:
                        continue  # a full disk or a network hiccup: try again next beat

        self._thread = threading.Thread(target=beat, name="datamodels-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        with self._writing:
            self._stop.set()
            try:
                self._remove_if({"token": self.token})
            except OSError:
                pass  # a read-only or full disk: the error that stopped the stage matters more


@contextmanager
def writer(fs: RunFS):
    """Hold the run's writer lock for the block (re-entrant within one thread; another thread
    of the same process is refused like another process)."""
    key = (fs.root, threading.get_ident())
    with _guard:
        if key in _held:
            _held[key] = (_held[key][0], _held[key][1] + 1)
            lock = None
        else:
            lock = RunLock(fs)
    if lock is not None:
        lock.acquire()
        with _guard:
            _held[key] = (lock.token, 1)
    try:
        yield
    finally:
        with _guard:
            token, depth = _held[key]
            if depth > 1:
                _held[key] = (token, depth - 1)
            else:
                del _held[key]
        if lock is not None:
            lock.release()
