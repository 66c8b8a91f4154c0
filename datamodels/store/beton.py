"""The run's beton (``data/examples.beton``) as a local file, and its per-user cache.

A local run's beton is the file itself. A run on an object store is copied once per host
into a cache that belongs to the user (`cache_dir`: ``$XDG_CACHE_HOME/datamodels/betons``,
else ``~/.cache/datamodels/betons``, else ``<tmp>/datamodels-cache-<uid>/betons``; mode
0700, refused when another user owns it). A copy is named by the sha256 of its bytes, never
by anything the run's files say; a small record ``id-<sha256(etag, size)>.json`` maps the
object as the store describes it (its ETag, a digest of its content, and its size) to that
content hash, so a rewritten beton (a regenerated dataset, a new run with the same config)
is a new object and a new copy. Every reuse checks the copy's size and sha256 once per
process; a copy that does not match is fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from datamodels.data.beton import BETON_NAME
from datamodels.errors import StoreError
from datamodels.store.identifiers import check_digest

if TYPE_CHECKING:
    from datamodels.store.run import Run

BETON_PATH = f"data/{BETON_NAME}"
_VERIFIED: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) hashed in this process


def _private(folder: Path) -> None:
    """``folder`` exists, is a real directory of this user, readable by nobody else."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    uid = os.getuid() if hasattr(os, "getuid") else info.st_uid
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        raise StoreError(
            f"beton cache {folder} is not a directory of this user (uid {uid}); remove it or "
            "set XDG_CACHE_HOME to a folder of your own"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)


def cache_dir() -> Path:
    """This user's beton cache, created with mode 0700 (see the module docstring)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    fallback = Path(tempfile.gettempdir()) / f"datamodels-cache-{uid}"
    candidates = [Path(home) / "datamodels", fallback]
    errors = []
    for root in candidates:
        try:
            _private(root)
            _private(root / "betons")
            return root / "betons"
        except OSError as err:  # an unwritable home: the next candidate
            errors.append(f"{root}: {err.strerror or err}")
    raise StoreError(f"no beton cache can be made ({'; '.join(errors)}); set XDG_CACHE_HOME")


def _identity(run: Run) -> str | None:
    """sha256 of (ETag, size) of the run's beton as the object store reports it; None when
    the store reports no ETag (the copy is then keyed by the bytes fetched each time)."""
    with run.fs.open_input_file(BETON_PATH) as handle:
        metadata = handle.metadata() or {}
        size = handle.size()
    etag = next((v for k, v in metadata.items() if str(k).lower() == "etag"), None)
    if not etag:
        return None
    etag = etag.decode() if isinstance(etag, bytes) else str(etag)
    return hashlib.sha256(f"{run.fs.display(BETON_PATH)}\0{etag}\0{size}".encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _valid_copy(folder: Path, digest: str, size: int) -> Path | None:
    """The cached copy of content ``digest`` when it is whole and unaltered, else None."""
    path = folder / f"{digest}.beton"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size != size:
        return None
    if _VERIFIED.get(str(path)) != (info.st_size, info.st_mtime_ns):
        if _file_digest(path) != digest:
            return None
        _VERIFIED[str(path)] = (info.st_size, info.st_mtime_ns)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (a 0600 temporary file renamed over it)."""
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _recorded(record_path: Path) -> tuple[str, int] | None:
    """(content sha256, size) of an identity record; None when absent or not one."""
    try:
        record = json.loads(record_path.read_text())
        return check_digest(record["sha256"], str(record_path), "sha256"), int(record["size"])
    except (OSError, ValueError, KeyError, TypeError, StoreError):
        return None


def local_beton(run: Run, config_hash: str | None = None) -> str:
    """A local path of the run's beton: the file itself, or (object stores) this user's
    cached copy of exactly the bytes the run holds now. ``config_hash`` is not used (copies
    are named by their content); it stays for older callers."""
    local = run.local_path(BETON_PATH)
    if local is not None:
        return local
    folder = cache_dir()
    identity = _identity(run)
    record_path = folder / f"id-{identity}.json" if identity else None
    recorded = _recorded(record_path) if record_path else None
    if recorded is not None and (path := _valid_copy(folder, *recorded)) is not None:
        return str(path)
    data = run.fs.read_bytes(BETON_PATH)
    digest = hashlib.sha256(data).hexdigest()
    path = _valid_copy(folder, digest, len(data))
    if path is None:
        path = folder / f"{digest}.beton"
        _write_private(path, data)
        info = os.lstat(path)
        _VERIFIED[str(path)] = (info.st_size, info.st_mtime_ns)
    if record_path is not None and _identity(run) == identity:  # not replaced meanwhile
        record = {"sha256": digest, "size": len(data), "source": run.fs.display(BETON_PATH)}
        _write_private(record_path, json.dumps(record).encode())
    return str(path)
