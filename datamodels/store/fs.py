"""The run directory's filesystem: local paths or any pyarrow filesystem URI, and atomic writes.

`RunFS` roots every path at the run directory, so the rest of ``datamodels.store`` speaks in
paths relative to the run (``models/part-....parquet``). It owns the one write primitive that
keeps readers safe while writers run: `RunFS.write_bytes_atomic`.

- Local filesystem: write ``.NAME.tmp-<uuid>`` in the same directory (a hidden name that does
  not end in ``.parquet``, so neither our listings nor DuckDB's ``*.parquet`` glob see it),
  ``fsync``, then ``os.replace`` (atomic on POSIX), then ``fsync`` the directory.
- Object stores (``s3://``, ``gs://``, ...): one output stream over the full buffer; the object
  only becomes visible when the upload completes, so a reader never sees a partial object.

Fencing: while a process holds the run's writer lock, `RunFS.fence` names the lock and its
token, and every write, move and delete checks that the lock still carries that token just
before it is published, so a writer that was presumed dead and superseded writes nothing more.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from datamodels.errors import InfrastructureError, RunLockedError, StoreError
from datamodels.store.create import etags

TEMP_MARKER = ".tmp-"
LOCK_FILES = ("_lock.json", "_locks/")  # the lock's own files are never fenced


def _is_uri(location: str) -> bool:
    return "://" in location


class RunFS:
    """A pyarrow filesystem rooted at a run directory.

    ``RunFS("runs/a")`` and ``RunFS("file:///abs/runs/a")`` are local;
    ``RunFS("s3://bucket/runs/a")`` uses ``pyarrow.fs.S3FileSystem`` (credentials from the
    environment, as pyarrow resolves them; an S3-compatible server from ``AWS_ENDPOINT_URL``
    or the URI's ``?endpoint_override=HOST:PORT&scheme=http``). Relative paths use ``/`` on
    every platform.
    """

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        location = os.fspath(uri)
        if _is_uri(location):
            try:
                filesystem, root = pafs.FileSystem.from_uri(location)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise StoreError(f"cannot open run directory {location!r}: {exc}") from exc
        else:
            filesystem = pafs.LocalFileSystem()
            root = str(Path(location).expanduser().resolve())
        self.uri: str = location
        # Messages name files by the URI without its options (``?endpoint_override=...``).
        self.display_root: str = location.split("?", 1)[0].rstrip("/")
        self.filesystem: pafs.FileSystem = filesystem
        self.root: str = root.rstrip("/") or "/"
        self.is_local: bool = isinstance(filesystem, pafs.LocalFileSystem)
        # (lock path, token) while this process holds the run's writer lock (store/lock.py):
        # it travels with the object into tasks, and every write checks it first
        self.fence: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"RunFS({self.uri!r})"

    # -- paths -------------------------------------------------------------------------------

    def join(self, *parts: str) -> str:
        """Full filesystem path of ``parts`` under the run root (``fs.join("models", name)``)."""
        cleaned = [str(part).strip("/") for part in parts if str(part).strip("/")]
        return posixpath.join(self.root, *cleaned) if cleaned else self.root

    def display(self, rel_path: str) -> str:
        """A path for messages: the URI or local path of ``rel_path``."""
        if self.is_local:
            return self.join(rel_path)
        return self.display_root + "/" + rel_path.strip("/")

    def _info(self, rel_path: str) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.join(rel_path))

    def exists(self, rel_path: str) -> bool:
        return self._info(rel_path).type != pafs.FileType.NotFound

    def isfile(self, rel_path: str) -> bool:
        return self._info(rel_path).type == pafs.FileType.File

    def size(self, rel_path: str) -> int:
        """Size in bytes of a file (``StoreError`` when it does not exist)."""
        info = self._info(rel_path)
        if info.type != pafs.FileType.File:
            raise StoreError(f"{self.display(rel_path)} does not exist")
        return int(info.size)

    def listdir(self, subdir: str, suffix: str = ".parquet") -> list[str]:
        """Sorted names of the files directly in ``subdir`` whose name ends with ``suffix``.

        A missing directory lists as empty; sub-directories are not descended into.
        """
        selector = pafs.FileSelector(self.join(subdir), allow_not_found=True, recursive=False)
        names = [
            info.base_name
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
        ]
        return sorted(names)

    def stats(self, subdir: str, suffix: str = "") -> list[tuple[str, int, int]]:
        """Sorted (name, size, mtime_ns) of the files directly in ``subdir`` ending in ``suffix``:
        a cheap witness of what a stage read (one listing, no file opened)."""
        selector = pafs.FileSelector(self.join(subdir), allow_not_found=True, recursive=False)
        return sorted(
            (info.base_name, int(info.size), int(info.mtime_ns or 0))
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
            and not info.base_name.startswith((".", "_"))
        )

    def stamps(self, subdir: str, suffix: str = "") -> dict[str, tuple[str, ...]]:
        """Name -> what tells a file's present content from any earlier one, for the files of
        `stats`: a cache keyed on it trusts nothing a user can set back. On a local disk
        (size, mtime_ns, ctime_ns, inode): rewriting a file in place changes its ctime, which
        ``os.utime`` cannot restore, and replacing it changes its inode. On S3 (size, ETag),
        from one listing. Elsewhere (size, mtime_ns)."""
        listed = self.stats(subdir, suffix)
        if self.is_local:
            found = {}
            for name, _, _ in listed:
                try:
                    st = os.stat(self.join(subdir, name))
                except OSError:
                    continue  # vanished since the listing: read as absent
                found[name] = tuple(
                    str(value) for value in (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                )
            return found
        tags = etags(self.filesystem, self.join(subdir)) or {}
        return {
            name: (str(size), f"etag:{tags[name]}") if name in tags else (str(size), str(mtime))
            for name, size, mtime in listed
        }

    def entries(self, subdir: str) -> list[str]:
        """Sorted names of everything (files and folders) directly in ``subdir``."""
        selector = pafs.FileSelector(self.join(subdir), allow_not_found=True, recursive=False)
        return sorted(info.base_name for info in self.filesystem.get_file_info(selector))

    def makedirs(self, rel_path: str) -> None:
        self.filesystem.create_dir(self.join(rel_path), recursive=True)

    # -- reading -----------------------------------------------------------------------------

    def read_bytes(self, rel_path: str) -> bytes:
        try:
            with self.filesystem.open_input_stream(self.join(rel_path)) as stream:
                return stream.read()
        except FileNotFoundError as exc:
            raise StoreError(f"{self.display(rel_path)} does not exist") from exc

    def open_input_file(self, rel_path: str) -> pa.NativeFile:
        """A random-access file (what ``pyarrow.parquet.ParquetFile`` wants)."""
        try:
            return self.filesystem.open_input_file(self.join(rel_path))
        except FileNotFoundError as exc:
            raise StoreError(f"{self.display(rel_path)} does not exist") from exc

    # -- writing -----------------------------------------------------------------------------

    def check_fence(self, rel_path: str) -> None:
        """Before a write is published: when this writer holds the run's lock, the lock must
        still carry its token; a writer whose lock was taken over (presumed dead while it was
        paused) stops with `RunLockedError` instead of writing beside the new holder."""
        if self.fence is None or rel_path.strip("/").startswith(LOCK_FILES):
            return
        path, token = self.fence
        try:
            current = json.loads(self.read_bytes(path)).get("token")
        except (StoreError, ValueError, AttributeError, OSError):
            current = None
        if current != token:
            raise RunLockedError(
                f"{self.display(rel_path)} not written: this writer no longer holds "
                f"{self.display(path)} (another writer took it over while this one was "
                "stalled); stopping, the new holder goes on"
            )

    def write_bytes_atomic(self, rel_path: str, data: bytes | pa.Buffer) -> None:
        """Make ``rel_path`` hold exactly ``data``; readers see the old file or the new one.
        A writer whose run lock was taken over is stopped before publishing (`check_fence`)."""
        if self.is_local:
            # Also creates the run directory itself on the first write. Object stores have no
            # directories to create (and creating marker objects would cost a request per write).
            self.makedirs(posixpath.dirname(rel_path.strip("/")))
            self._write_local_atomic(self.join(rel_path), data, lambda: self.check_fence(rel_path))
        else:
            self.check_fence(rel_path)
            # Object stores publish an object only when its upload completes: one stream over
            # the whole buffer is the atomic write there (no rename needed, none available).
            with self.filesystem.open_output_stream(self.join(rel_path)) as stream:
                stream.write(data)

    @staticmethod
    def _write_local_atomic(
        path: str, data: bytes | pa.Buffer, before_rename: Callable[[], None] | None = None
    ) -> None:
        directory, name = os.path.split(path)
        temp_path = os.path.join(directory, f".{name}{TEMP_MARKER}{uuid.uuid4().hex}")
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(memoryview(data))
                handle.flush()
                os.fsync(handle.fileno())
            if before_rename is not None:
                before_rename()
            os.replace(temp_path, path)
        except BaseException:
            if os.path.exists(temp_path):
                os.unlink(temp_path)
            raise
        # The rename itself must survive a crash, or a "finished" shard can vanish on reboot.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete_dir(self, rel_path: str) -> None:
        """Remove ``rel_path`` and everything under it (nothing when it does not exist)."""
        if self.exists(rel_path):
            self.check_fence(rel_path)
            self.filesystem.delete_dir(self.join(rel_path))

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (both relative), creating ``dst``'s directory."""
        self.check_fence(dst)
        if self.is_local:
            self.makedirs(posixpath.dirname(dst.strip("/")))
            os.replace(self.join(src), self.join(dst))
        else:
            self.filesystem.move(self.join(src), self.join(dst))

    def check_writable(self, subdir: str) -> None:
        """Refuse a run directory that cannot be written (full, read-only) before any work:
        `InfrastructureError` naming ``subdir`` and the fix."""
        probe = f"{subdir}/.probe-{uuid.uuid4().hex}"
        try:
            self.write_bytes_atomic(probe, b"")
            self.filesystem.delete_file(self.join(probe))
        except OSError as err:
            raise InfrastructureError(
                f"{self.display(subdir)} is not writable ({err.strerror or err}); free space or "
                "fix permissions, then rerun"
            ) from None
