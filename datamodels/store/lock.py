"""One writer per run directory: ``_lock.json``, held while a stage writes the run.

The lock names its holder (user, host, pid, command, start time) and carries a heartbeat
that a background thread refreshes every ``HEARTBEAT_S`` seconds. A second writer is refused
with one line naming the holder. A lock is stale, and is taken over, when its holder is a
dead process on this host, or when its heartbeat is older than ``STALE_S`` (a holder on
another host that died or lost the run directory). On a local disk the lock file is created
with ``link`` (which fails when the name exists), so two writers can never both create it.
On S3 and the S3-compatible stores that honour conditional writes the lock is created with a
PUT carrying ``If-None-Match: *`` (store/create.py): the store itself refuses the second
writer (412), so two writers starting at the same instant never both hold it. Where a store
has no conditional write (Google Cloud Storage through pyarrow, an S3-compatible server that
ignores the header, a process without botocore) the lock is a lease object that each writer
reads back 0.2 s after writing it (the later write wins and the loser backs off): two writers
whose writes land in the same instant can then both believe they hold it, and the run relies
on the fence below to stop the loser's writes.

The run directory is probed for writability before the lock is taken (a read-only or full
disk stops with one line, `InfrastructureError`, not a traceback from the lock file).

Readers (``status``, ``query``, ``verify``) never take the lock. A process that holds the
lock may take it again (nested stages, ``datamodels run``).

**Shared holders** (``writer(fs, shared=True)``): ``datamodels train --shard I/N`` workers
write disjoint models (and only shards of ``models/``), so any number of them may write one
run at once. Each holds its own ``_locks/shared-<token>.json`` (same record, heartbeat and
staleness rules). Exclusion with the one exclusive writer is two-sided, each side first
publishing its own lock and then looking for the other's: a shared holder backs off when a
live ``_lock.json`` exists, an exclusive writer when a live shared lock exists (both may back
off in a race; neither ever proceeds while the other writes). ``wait_s`` retries a refused
writer until the holder is gone (array jobs that start together queue behind one prepare).

**Fencing.** A holder presumed dead (no heartbeat for ``STALE_S`` from another host: it may
only have been paused) may wake up after its lock was taken over. ``writer`` sets the run
filesystem's fence to (lock path, token), and every write through `RunFS` (tables, shards,
checkpoints, stage parts and markers; in the driver and, as the filesystem travels with the
stage, in its tasks) compares the lock's token with its own just before publishing: a
superseded writer stops with one line and writes nothing more. Its own heartbeat must not
undo the takeover either: on a store that honours ``If-Match`` the heartbeat rewrites (and
the release deletes) the lock only while it still carries the ETag of the holder's last
write, so a holder that read its own lock, paused, and writes after a takeover gets ``412``:
it stops beating, marks itself ``superseded`` and its next write meets the fence. Where the
store has no conditional write (the lease above; a local disk, where the rewrite is a read,
then a rename) the heartbeat stays a read of the token then a plain write, and a holder
paused between the two can still overwrite its successor's lock once.
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

from datamodels.errors import InfrastructureError, RunLockedError
from datamodels.store.create import conditional_put, delete_if
from datamodels.store.fs import RunFS

LOCK_PATH = "_lock.json"
SHARED_DIR = "_locks"
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


def read_lock(fs: RunFS, path: str = LOCK_PATH) -> dict | None:
    """The lock record at ``path``; None when the run is not locked. A lock file that does not
    parse (a writer died between creating and filling it) reads as ``{"torn": True}`` with its
    modification time as heartbeat, so it turns stale like any other."""
    try:
        raw = fs.read_bytes(path)
    except Exception:  # noqa: BLE001 - absent (or vanished while read)
        return None
    try:
        record = json.loads(raw)
        if isinstance(record, dict) and "token" in record:
            return record
    except ValueError:
        pass
    try:
        mtime = fs.filesystem.get_file_info(fs.join(path)).mtime.timestamp()
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


def shared_holders(fs: RunFS) -> list[tuple[str, dict]]:
    """(path, record) of every shared lock in ``_locks/``, stale ones included."""
    holders = []
    for name in fs.listdir(SHARED_DIR, ".json"):
        path = f"{SHARED_DIR}/{name}"
        record = read_lock(fs, path)
        if record is not None:
            holders.append((path, record))
    return holders


class RunLock:
    """The writer lock of one run directory, exclusive or shared (see the module docstring)."""

    def __init__(self, fs: RunFS, shared: bool = False) -> None:
        self.fs = fs
        self.token = uuid.uuid4().hex
        self.shared = shared
        self.path = f"{SHARED_DIR}/shared-{self.token}.json" if shared else LOCK_PATH
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # a heartbeat write and the release never interleave
        self._etag: str | None = None  # what the store answered our last write of the lock
        self.superseded = False  # a conditional heartbeat found another writer's lock

    def record(self) -> dict:
        now = time.time()
        return {
            "token": self.token,
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": " ".join(sys.argv[:3]),
            "shared": self.shared,
            "started": now,
            "heartbeat": now,
        }

    def _create_local(self, payload: bytes) -> bool:
        """Create the lock with its content in one step: a filled temp file hard-linked into
        place (``link`` fails when the lock exists), so no one ever sees an empty lock."""
        path = self.fs.join(self.path)
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
        result = conditional_put(self.fs.filesystem, self.fs.join(self.path), payload)
        if result is not None:  # the store decided, atomically
            created, self._etag = result
            return created
        if self.shared:  # a name of its own: nobody races it
            self.fs.write_bytes_atomic(self.path, payload)
            return True
        # no conditional write on this store: a lease, read back after a pause
        if read_lock(self.fs, self.path) is not None:
            return False
        self.fs.write_bytes_atomic(self.path, payload)
        time.sleep(0.2)  # a writer racing us overwrites within this window; read back who won
        return (read_lock(self.fs, self.path) or {}).get("token") == self.token

    def _other_side(self) -> str | None:
        """Who of the other kind holds the run (described), once ours is published; stale
        shared locks are removed on the way."""
        if self.path not in (LOCK_PATH, f"{SHARED_DIR}/shared-{self.token}.json"):
            return None  # a mutex: nobody else to exclude
        if self.shared:
            holder = read_lock(self.fs)
            if holder is not None and not is_stale(holder):
                return f"{describe(holder)} (an exclusive writer)"
            return None
        live = []
        for path, record in shared_holders(self.fs):
            if is_stale(record):
                self._remove_if(record, path)
            else:
                live.append(record)
        if live:
            return f"{len(live)} shard worker(s), e.g. {describe(live[0])}"
        return None

    def _create_or_refuse(self) -> bool:
        try:
            return self._try_create()
        except OSError as err:  # read-only, full, or no permission: one line, no traceback
            raise InfrastructureError(
                f"{self.fs.display(self.path)} cannot be written ({err.strerror or err}); "
                "the run directory must be writable: fix permissions or free space, then rerun"
            ) from None

    def acquire(self) -> None:
        for _ in range(3):
            if self._create_or_refuse():
                other = self._other_side()
                if other is not None:
                    self._remove_if({"token": self.token}, self.path)
                    raise RunLockedError(
                        f"{self.fs.display('')} is being written by {other}; wait for it to "
                        "finish"
                    )
                self._start_heartbeat()
                return
            holder = read_lock(self.fs, self.path)
            if holder is None:
                continue  # released (or torn) between our attempt and the read: try again
            if not is_stale(holder):
                raise RunLockedError(
                    f"{self.fs.display('')} is being written by {describe(holder)}; wait for it to "
                    f"finish (a dead holder's lock is taken over: at once on this host, after "
                    f"{STALE_S:.0f}s without a heartbeat from another)"
                )
            self._remove_if(holder, self.path)  # stale: take it over
        raise RunLockedError(f"{self.fs.display(LOCK_PATH)}: could not take the run lock; retry")

    def _remove_if(self, expected: dict, path: str = LOCK_PATH) -> None:
        """Delete the lock at ``path`` only if it still holds ``expected`` (as judged a moment
        ago)."""
        current = read_lock(self.fs, path)
        same = current is not None and (
            current.get("token") == expected.get("token")
            if "token" in expected
            else current.get("torn") and current.get("heartbeat") == expected.get("heartbeat")
        )
        if same:
            try:
                self.fs.filesystem.delete_file(self.fs.join(path))
            except FileNotFoundError:
                pass

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                with self._writing:
                    if self._stop.is_set():
                        return
                    try:
                        current = read_lock(self.fs, self.path)
                        if current is None or current.get("token") != self.token:
                            return  # taken over (we were presumed dead): stop touching it
                        current["heartbeat"] = time.time()
                        if not self._write_beat(json.dumps(current).encode()):
                            self.superseded = True  # the fence stops this writer's writes
                            return
                    except OSError:
                        continue  # a full disk or a network hiccup: try again next beat

        self._thread = threading.Thread(target=beat, name="datamodels-run-lock", daemon=True)
        self._thread.start()

    def _write_beat(self, payload: bytes) -> bool:
        """Rewrite the lock with ``payload``: on a store that honours ``If-Match`` only while
        it is still the object we last wrote (False when another writer's lock replaced it,
        even one that took it over between our read and this write); elsewhere outright."""
        if self._etag is None:
            self.fs.write_bytes_atomic(self.path, payload)
            return True
        result = conditional_put(self.fs.filesystem, self.fs.join(self.path), payload, self._etag)
        if result is None:  # cannot happen once an ETag was given back; as without one
            self.fs.write_bytes_atomic(self.path, payload)
            return True
        written, etag = result
        if written:
            self._etag = etag
        return written

    def release(self) -> None:
        with self._writing:
            self._stop.set()
            try:
                if self._etag is not None:
                    try:
                        delete_if(self.fs.filesystem, self.fs.join(self.path), self._etag)
                        return  # deleted, or someone else's lock now: left alone
                    except OSError:
                        pass  # a store that refuses conditional deletes: read, then delete
                self._remove_if({"token": self.token}, self.path)
            except OSError:
                pass  # a read-only or full disk: the error that stopped the stage matters more


@contextmanager
def writer(fs: RunFS, shared: bool = False, wait_s: float = 0.0):
    """Hold the run's writer lock for the block: exclusive, or ``shared`` with other shard
    workers. Re-entrant within one thread (an exclusive holder may also enter a shared block);
    another thread of the same process is refused like another process. A refused writer
    retries for ``wait_s`` seconds before raising `RunLockedError`."""
    key = (fs.root, threading.get_ident())
    with _guard:
        if key in _held:
            _held[key] = (_held[key][0], _held[key][1] + 1)
            lock = None
        else:
            lock = RunLock(fs, shared=shared)
    if lock is not None:
        if fs.is_local:  # before the lock's own files: a read-only run stops in one line
            fs.check_writable("")
        _acquire_within(lock, wait_s, longest_pause=1.0)
        with _guard:
            _held[key] = (lock.token, 1)
        fs.fence = (lock.path, lock.token)  # every write checks it (RunFS.check_fence)
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
            fs.fence = None
            lock.release()


def _acquire_within(lock: RunLock, wait_s: float, longest_pause: float) -> None:
    """``lock.acquire()``, retried for up to ``wait_s`` seconds while another holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock.acquire()
            return
        except RunLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(longest_pause, max(0.05, deadline - time.monotonic())))


@contextmanager
def mutex(fs: RunFS, name: str, wait_s: float = 120.0):
    """Hold ``_locks/<name>.mutex`` for a short read-modify-write among shard workers (same
    record and staleness rules as the run lock; waits up to ``wait_s`` for its holder)."""
    lock = RunLock(fs)
    lock.path = f"{SHARED_DIR}/{name}.mutex"
    _acquire_within(lock, wait_s, longest_pause=0.05)
    try:
        yield
    finally:
        lock.release()
