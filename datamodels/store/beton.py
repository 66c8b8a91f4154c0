"""The run's examples file as a local file, and its per-user cache.

The file is the beton (``data/examples.beton``) or, where FFCV is not installed, the array
store (``data/examples.npy`` with its checksum ``data/examples.npy.sha256``; see
``data.array_store``); `data_path` says which one a run holds.

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

from datamodels.data.array_store import ARRAYS_NAME, CHECKSUM_SUFFIX
from datamodels.data.beton import BETON_NAME, data_format, ffcv_installed
from datamodels.errors import DataError, StoreError
from datamodels.store.identifiers import check_digest

if TYPE_CHECKING:
    from datamodels.store.run import Run

BETON_PATH = f"data/{BETON_NAME}"
ARRAYS_PATH = f"data/{ARRAYS_NAME}"
ARRAYS_CHECKSUM_PATH = ARRAYS_PATH + CHECKSUM_SUFFIX


def data_path(run: Run) -> str:
    """The run's examples file (relative path): the one it holds (the beton where FFCV is
    installed and both exist, else the array store), or for a run not prepared yet the one
    ``prepare`` writes here (`data_format`)."""
    has_beton, has_arrays = run.fs.isfile(BETON_PATH), run.fs.isfile(ARRAYS_PATH)
    if has_beton and (ffcv_installed() or not has_arrays):
        return BETON_PATH
    if has_arrays:
        return ARRAYS_PATH
    return BETON_PATH if data_format() == "beton" else ARRAYS_PATH


def data_paths(run: Run) -> list[str]:
    """`data_path` and, for the array store, its checksum file: what ``prepare`` writes."""
    path = data_path(run)
    return [path, ARRAYS_CHECKSUM_PATH] if path == ARRAYS_PATH else [path]
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


def _identity(run: Run, rel_path: str = BETON_PATH) -> str | None:
    """sha256 of (ETag, size) of the run's beton as the object store reports it; None when
    the store reports no ETag (the copy is then keyed by the bytes fetched each time)."""
    with run.fs.open_input_file(rel_path) as handle:
        metadata = handle.metadata() or {}
        size = handle.size()
    etag = next((v for k, v in metadata.items() if str(k).lower() == "etag"), None)
    if not etag:
        return None
    etag = etag.decode() if isinstance(etag, bytes) else str(etag)
    return hashlib.sha256(f"{run.fs.display(rel_path)}\0{etag}\0{size}".encode()).hexdigest()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _valid_copy(folder: Path, digest: str, size: int, suffix: str = ".beton") -> Path | None:
    """The cached copy of content ``digest`` when it is whole and unaltered, else None."""
    path = folder / f"{digest}{suffix}"
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
    """A local path of the run's examples file (`data_path`: the beton or the array store):
    the file itself, or (object stores) this user's cached copy of exactly the bytes the run
    holds now; an array store's copy must match the run's checksum file and gets its own
    beside it. ``config_hash`` is not used (copies are named by their content); it stays for
    older callers."""
    rel_path = data_path(run)
    local = run.local_path(rel_path)
    if local is not None:
        return local
    suffix = Path(rel_path).suffix
    folder = cache_dir()
    identity = _identity(run, rel_path)
    record_path = folder / f"id-{identity}.json" if identity else None
    recorded = _recorded(record_path) if record_path else None
    if recorded is not None and (path := _valid_copy(folder, *recorded, suffix)) is not None:
        return str(path)
    data = run.fs.read_bytes(rel_path)
    digest = hashlib.sha256(data).hexdigest()
    if rel_path == ARRAYS_PATH:
        _check_recorded_digest(run, digest)
    path = _valid_copy(folder, digest, len(data), suffix)
    if path is None:
        path = folder / f"{digest}{suffix}"
        _write_private(path, data)
        info = os.lstat(path)
        _VERIFIED[str(path)] = (info.st_size, info.st_mtime_ns)
    if rel_path == ARRAYS_PATH:  # what the array store's reader checks the copy against
        checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
        _write_private(checksum, f"{digest}  {path.name}\n".encode())
    if record_path is not None and _identity(run, rel_path) == identity:  # not replaced meanwhile
        record = {"sha256": digest, "size": len(data), "source": run.fs.display(rel_path)}
        _write_private(record_path, json.dumps(record).encode())
    return str(path)


def _check_recorded_digest(run: Run, digest: str) -> None:
    """The fetched array store's sha256 is the one its checksum file records."""
    try:
        expected = run.fs.read_bytes(ARRAYS_CHECKSUM_PATH).decode().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError, StoreError):
        expected = None
    if expected != digest:
        raise DataError(
            f"{run.fs.display(ARRAYS_PATH)} does not match its checksum "
            f"{run.fs.display(ARRAYS_CHECKSUM_PATH)} (altered, torn or missing); delete the "
            "run's data/ and rerun `datamodels prepare`"
        )
