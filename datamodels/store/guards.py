"""What a reader checks before it trusts ``models/``, cheaply enough to do it every time.

- **A compaction stopped half way** (`refuse_interrupted`): a group in
  ``models/_compacting/`` whose journal exists, whose sources are stashed in ``old/`` and
  whose merged shard is not in ``models/`` hides those models from every listing. Readers
  (`Run.models` / ``masks`` / ``margins``, ``status``, ``query``, ``fit``) refuse in one line
  naming ``datamodels compact RUN``, which (like the next ``train``) finishes or undoes it.
  One listing of ``models/_compacting/`` when nothing is there.
- **Shards verified once per change** (`check_trust`): with ``pages`` every page of every
  shard is read against its CRC (``query`` and the set-aside at the start of ``train``), and a
  shard whose footer records no ``config_hash`` (written before it was recorded, or rewritten
  without it) has its masks compared with the plan when ``config.yaml`` is a full config, as
  `verify` does. A shard that passes is remembered in a per-user cache under the key (name,
  stamp, check), so the next reader of an unchanged shard opens nothing:
  ``$XDG_CACHE_HOME/datamodels/verified/<sha256 of the run's location>.json`` (else
  ``~/.cache/...``, else ``<tmp>/datamodels-cache-<uid>/...``; mode 0700). The stamp is what
  no user can set back (`RunFS.stamps`): on a local disk size, modification time, change
  time and inode (a shard changed in place and given back its modification time with
  ``os.utime`` has a new change time, and is read again); on S3 size and ETag; elsewhere
  size and modification time. `verify` always reads everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from datamodels.errors import StoreError
from datamodels.plans import stored_masks
from datamodels.store.identifiers import check_shard_name
from datamodels.store.problems import Problem
from datamodels.store.provenance import PlanCheck, run_config
from datamodels.store.schemas import COMPACTING_DIR, MODELS_DIR
from datamodels.store.shard_checks import ShardInfo, _map_threads, inspect_shard, read_checked

if TYPE_CHECKING:
    from datamodels.store.fs import RunFS
    from datamodels.store.run import Run

_memory: dict[str, set[str]] = {}  # cache file (or run location) -> keys verified
_guard = threading.Lock()
_MAX_ENTRIES = 200_000  # a record that grew past this starts afresh


# -- an interrupted compaction -----------------------------------------------------------------


def hidden_by_compaction(fs: RunFS) -> list[tuple[str, int]]:
    """(group folder, shards stashed) of every interrupted compaction that hides models: its
    journal written, sources moved into ``old/`` (and not also still in ``models/``), merged
    shard not (yet) in ``models/``."""
    hidden = []
    entries = fs.entries(COMPACTING_DIR)
    listed = set(fs.listdir(MODELS_DIR, ".parquet")) if entries else set()
    for entry in entries:
        folder = f"{COMPACTING_DIR}/{entry}"
        journal_path = f"{folder}/journal.json"
        if not fs.isfile(journal_path):
            continue  # died while writing the merged shard: the sources never moved
        stashed = [name for name in fs.listdir(f"{folder}/old", ".parquet") if name not in listed]
        if not stashed:
            continue
        try:
            merged = check_shard_name(
                json.loads(fs.read_bytes(journal_path)).get("merged"),
                fs.display(journal_path),
                "merged",
            )
            published = fs.isfile(f"{MODELS_DIR}/{merged}")
        except (StoreError, ValueError, AttributeError, OSError):
            published = False
        if not published:
            hidden.append((folder, len(stashed)))
    return hidden


def interrupted_line(run: Run) -> str | None:
    """The one line a reader refuses with while a compaction hides models; None otherwise."""
    hidden = hidden_by_compaction(run.fs)
    if not hidden:
        return None
    folder, stashed = hidden[0]
    more = f" (and {len(hidden) - 1} more group(s))" if len(hidden) > 1 else ""
    return (
        f"{run.fs.display(folder)}: a `datamodels compact` stopped after moving {stashed} "
        f"shard(s) aside and before publishing their merged shard{more}, so their models are "
        f"missing from models/; run `datamodels compact {run.fs.display_root}` to finish it "
        "(the next `train` does too; if a compact is running now, wait for it)"
    )


def refuse_interrupted(run: Run) -> None:
    """`StoreError` (one line) while an interrupted compaction hides models."""
    line = interrupted_line(run)
    if line is not None:
        raise StoreError(line)


# -- the per-user cache of verified shards ---------------------------------------------------


def _cache_file(fs: RunFS) -> Path | None:
    """This user's record of the run's verified shards; None when no private folder can be
    made (the record then lives in this process only)."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    name = hashlib.sha256(fs.display("").encode()).hexdigest()[:32] + ".json"
    for root in (Path(home), Path(tempfile.gettempdir()) / f"datamodels-cache-{uid}"):
        folder = root / "datamodels" / "verified"
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(folder)
            if not os.path.isdir(folder) or os.path.islink(folder):
                continue
            if hasattr(os, "getuid") and info.st_uid != os.getuid():
                continue
            if info.st_mode & 0o077:
                os.chmod(folder, 0o700)
            return folder / name
        except OSError:
            continue
    return None


def _known(fs: RunFS, path: Path | None) -> set[str]:
    slot = str(path) if path is not None else fs.display("")
    with _guard:
        if slot in _memory:
            return _memory[slot]
    keys: set[str] = set()
    if path is not None:
        try:
            keys = set(json.loads(path.read_text()).get("verified", []))
        except (OSError, ValueError, AttributeError, TypeError):
            keys = set()
    with _guard:
        _memory[slot] = keys
    return keys


def _remember(
    fs: RunFS, path: Path | None, keys: set[str], current: dict[str, tuple[str, ...]]
) -> None:
    """Add ``keys``; drop the entries of the files in ``current`` (path -> stamp as they
    are now) that describe them as they were before."""
    slot = str(path) if path is not None else fs.display("")
    with _guard:
        known = set()
        for key in _memory.get(slot, set()):
            name, *stamp = key.split("\0")
            if name not in current or current[name] == tuple(stamp[:-1]):
                known.add(key)
        known = (known if len(known) < _MAX_ENTRIES else set()) | keys
        _memory[slot] = known
    if path is None:
        return
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"run": fs.display(""), "verified": sorted(known)}, handle)
        os.replace(temp, path)
    except OSError:  # a full or read-only cache: the next reader verifies again
        try:
            os.unlink(temp)
        except OSError:
            pass


def check_trust(
    run: Run,
    infos: list[ShardInfo],
    n_train: int | None,
    n_eval: int | None,
    config_hash: str | None,
    pages: bool,
) -> list[ShardInfo]:
    """``infos`` with every usable shard verified (see the module docstring): a shard whose
    pages or plan check fails is replaced by what the full read found (its problems)."""
    if not pages and all(info.hashed or not info.usable for info in infos):
        return infos  # nothing to verify: not even a listing
    fs = run.fs
    listed = {f"{MODELS_DIR}/{name}": stamp for name, stamp in fs.stamps(MODELS_DIR).items()}
    path = _cache_file(fs)
    known = _known(fs, path)
    plan_kind = f"plan:{config_hash}"
    plan = None
    if any(info.usable and not info.hashed for info in infos):
        # as `verify`: a config.yaml that is not a full config checks no plan, and an
        # unreadable plan_masks/ table is verify's to name
        _, config, _ = run_config(run)
        if config is not None and n_train is not None:
            try:
                plan = PlanCheck.of(config, n_train, stored_masks(config, run))
            except StoreError:
                plan = None
    todo: list[tuple[int, list[str]]] = []
    for index, info in enumerate(infos):
        rel_path = f"{MODELS_DIR}/{info.name}"
        if not info.usable or rel_path not in listed:
            continue
        wants_plan = not info.hashed and plan is not None
        checks = (["pages"] if pages else []) + ([plan_kind] if wants_plan else [])
        missing = [c for c in checks if "\0".join((rel_path, *listed[rel_path], c)) not in known]
        if missing:
            todo.append((index, missing))
    if not todo:
        return infos

    def check(item: tuple[int, list[str]]) -> ShardInfo:
        index, checks = item
        with_plan = plan if plan_kind in checks else None
        return inspect_shard(
            fs, infos[index].name, n_train, n_eval, config_hash=config_hash,
            full="pages" in checks or with_plan is not None, plan=with_plan,
        )  # fmt: skip

    results = _map_threads(check, todo)
    out = list(infos)
    verified: set[str] = set()
    for (index, checks), result in zip(todo, results, strict=True):
        if not result.usable:
            out[index] = result
            continue
        rel_path = f"{MODELS_DIR}/{result.name}"
        verified |= {"\0".join((rel_path, *listed[rel_path], c)) for c in checks}
    _remember(fs, path, verified, listed)
    return out


def check_pages(run: Run, rel_paths: list[str]) -> list[Problem]:
    """Problems (``torn``, ``corrupt``) of the tables ``rel_paths``, every page read against
    its CRC; a table verified before and unchanged since (the same stamp, `RunFS.stamps`)
    is not read again. The same per-user cache as the shards, under the table's path."""
    fs = run.fs
    path = _cache_file(fs)
    known = _known(fs, path)
    listed: dict[str, tuple[str, ...]] = {}
    for folder in sorted({posixpath.dirname(rel_path) for rel_path in rel_paths}):
        listed |= {posixpath.join(folder, n): stamp for n, stamp in fs.stamps(folder).items()}
    stamps = {rel_path: listed.get(rel_path, ("absent",)) for rel_path in rel_paths}
    todo = [
        rel_path
        for rel_path in rel_paths
        if "\0".join((rel_path, *stamps[rel_path], "pages")) not in known
    ]
    if not todo:
        return []
    results = _map_threads(lambda rel_path: read_checked(fs, rel_path, lambda _: [])[1], todo)
    problems = [problem for found in results for problem in found]
    verified = {
        "\0".join((rel_path, *stamps[rel_path], "pages"))
        for rel_path, found in zip(todo, results, strict=True)
        if not found
    }
    _remember(fs, path, verified, stamps)
    return problems


_SHARD_RANGE = re.compile(r"part-(\d+)-(\d+)-[0-9a-f]+\.parquet")


def stored_ids_among(run: Run, model_ids: np.ndarray) -> np.ndarray:
    """The ids of ``model_ids`` that a usable shard of ``models/`` already holds, sorted.

    One listing; only the shards whose name's id range (``part-<min>-<max>-...``) overlaps
    ``model_ids`` have their ``model_id`` column read (a shard of another name is read too).
    A training task calls it just before it writes, so models another writer stored in the
    meantime (a superseded driver's task finishing late) are not stored a second time."""
    ids = np.unique(np.asarray(model_ids, dtype=np.int64))
    if ids.size == 0:
        return ids
    low, high = int(ids[0]), int(ids[-1])
    names = []
    for name in run.shard_files():
        match = _SHARD_RANGE.fullmatch(name)
        if match is None or (int(match[1]) <= high and int(match[2]) >= low):
            names.append(name)
    infos = _map_threads(lambda name: inspect_shard(run.fs, name, None, None), names)
    held = [info.model_ids for info in infos if info.usable and info.model_ids is not None]
    if not held:
        return np.zeros(0, dtype=np.int64)
    return np.intersect1d(ids, np.concatenate(held))
