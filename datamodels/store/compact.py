"""``datamodels compact``: many small ``models/`` shards merged into a few large ones, safely.

A training task writes one shard per batch, so a 300,000-model run holds thousands of files;
`compact_models` merges runs of consecutive shards (in name order, i.e. model-id order) into
shards of about ``target_bytes`` (or ``target_rows`` models), so every reader lists, opens and
plans over a few hundred files.

Readers treat a ``model_id`` stored in two shards as an error (`verify` reports it, the
readers refuse), so the merged shard and its sources must never both be visible. Per group of
sources, in ``models/_compacting/<merged stem>/`` (a folder no reader lists)::

    1. write     the merged shard as ``merged.parquet`` (page checksums, sorted by model_id)
    2. check     read it back whole (every page CRC) and compare with the sources' rows
    3. journal   ``journal.json``: the merged name and its sources
    4. stash     move each source into ``old/`` (the models vanish from readers for a moment)
    5. publish   move ``merged.parquet`` to ``models/<shard name of its ids>``
    6. clean     delete ``old/``, then the journal

A crash before 3 leaves the sources in place (the folder is garbage); between 3 and 5 the
journal says which sources to move back; after 5 the merged shard holds every model. On an
object store a move is a copy and a delete: a crash between the two leaves a source both
stashed and in ``models/``; recovery deletes the stashed copy when the two are
byte-identical and refuses (naming both) only when they differ. Between 4 and 5 the readers
refuse the run (`datamodels.store.guards`), naming ``datamodels compact``. Either
way nothing is lost and no id is visible twice; `recover_compaction` finishes or undoes an
interrupted group and runs first in `compact_models` and in the train stage's start, and
`verify` reports an interrupted one (``interrupted``) until then.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.errors import StoreError
from datamodels.store.identifiers import check_shard_name
from datamodels.store.problems import first_line
from datamodels.store.schemas import COMPACTING_DIR, MODELS_DIR, models_written_schema
from datamodels.store.shards import (
    CONFIG_HASH_KEY,
    conform_table,
    serialize_parquet,
    shard_name,
)
from datamodels.store.verify import scan_shards

DEFAULT_TARGET_BYTES = 256 * 1024**2
ROW_GROUP_ROWS = 1024  # row groups of a merged shard: readers scan them in parallel


@dataclass
class CompactSummary:
    shards_before: int = 0
    shards_after: int = 0
    models: int = 0
    merged: int = 0  # merged shards written
    skipped: list[str] = field(default_factory=list)  # why a shard or group was left alone
    recovered: list[str] = field(default_factory=list)  # interrupted groups finished or undone


def _group_dir(merged: str) -> str:
    return f"{COMPACTING_DIR}/{posixpath.splitext(merged)[0]}"


def compacting_witness(fs) -> dict:
    """``{"compacting": [group folders]}`` while an interrupted compaction left any, else
    ``{}``: part of the train stage's fingerprint, so a leftover makes ``train`` run (and
    repair it) rather than say it has nothing to do; a run without any keeps its digest."""
    entries = fs.entries(COMPACTING_DIR)
    return {"compacting": entries} if entries else {}


def recover_compaction(run) -> list[str]:
    """Finish or undo every interrupted group (see the module docstring); returns their
    folders. The caller holds the run's writer lock."""
    fs = run.fs
    recovered = []
    for entry in fs.entries(COMPACTING_DIR):
        folder = f"{COMPACTING_DIR}/{entry}"
        journal_path = f"{folder}/journal.json"
        if fs.isfile(journal_path):
            journal = json.loads(fs.read_bytes(journal_path))
            merged = journal.get("merged") if isinstance(journal, dict) else None
            merged = check_shard_name(merged, fs.display(journal_path), "merged")
            if not fs.isfile(f"{MODELS_DIR}/{merged}"):  # not published: undo
                for name in fs.listdir(f"{folder}/old", ".parquet"):
                    stashed = f"{folder}/old/{name}"
                    if fs.isfile(f"{MODELS_DIR}/{name}"):
                        _drop_identical_copy(fs, stashed, f"{MODELS_DIR}/{name}")
                        continue
                    fs.move(stashed, f"{MODELS_DIR}/{name}")
        _clean(fs, folder)
        recovered.append(folder)
    if recovered and not fs.entries(COMPACTING_DIR):
        fs.delete_dir(COMPACTING_DIR)
    return recovered


def _drop_identical_copy(fs, stashed: str, published: str) -> None:
    """A source both stashed and in ``models/``: an object store's move (copy, then delete)
    stopped between its two steps. Byte-identical copies are one shard: the stashed one is
    deleted. Copies that differ are refused (which one holds the models is not ours to say)."""
    if fs.size(stashed) == fs.size(published):
        if fs.read_bytes(stashed) == fs.read_bytes(published):
            fs.check_fence(stashed)
            fs.filesystem.delete_file(fs.join(stashed))
            return
    raise StoreError(
        f"{fs.display(stashed)} and {fs.display(published)} differ although a compaction "
        "moved one to the other; move one of them aside by hand, then rerun"
    )


def _clean(fs, folder: str) -> None:
    """Delete a group's folder; the journal goes last (it decides what recovery does)."""
    fs.delete_dir(f"{folder}/old")
    for name in fs.entries(folder):
        if name != "journal.json":
            path = f"{folder}/{name}"
            if fs.isfile(path):
                fs.filesystem.delete_file(fs.join(path))
            else:
                fs.delete_dir(path)
    fs.delete_dir(folder)


def _read_source(fs, name: str) -> tuple[pa.Table, bytes | None]:
    """(rows, recorded config hash) of one source shard, every page checked."""
    with fs.open_input_file(f"{MODELS_DIR}/{name}") as handle:
        parquet_file = pq.ParquetFile(handle, page_checksum_verification=True)
        table = parquet_file.read()
        metadata = parquet_file.schema_arrow.metadata or {}
    return table, metadata.get(CONFIG_HASH_KEY)


def _merged_table(fs, names: list[str], n_train: int, n_eval: int) -> tuple[pa.Table, pa.Schema]:
    """The sources' rows as one table sorted by model_id, and the schema to write it with."""
    tables, hashes = zip(*(_read_source(fs, name) for name in names), strict=True)
    if len(set(hashes)) != 1:
        raise StoreError(f"sources record different config hashes: {sorted(map(str, hashes))}")
    schema = models_written_schema(n_train, n_eval)  # shards without ``trainer``: null
    if hashes[0] is not None:
        schema = schema.with_metadata({**schema.metadata, CONFIG_HASH_KEY: hashes[0]})
    table = pa.concat_tables(
        [conform_table(t, schema, name) for t, name in zip(tables, names, strict=True)]
    ).replace_schema_metadata(
        schema.metadata
    )
    order = np.argsort(table.column("model_id").to_numpy(), kind="stable")
    return table.take(order), schema


def write_merged(fs, folder: str, table: pa.Table, schema: pa.Schema) -> str:
    """Step 1: the merged shard in the group's folder; returns its path."""
    path = f"{folder}/merged.parquet"
    fs.write_bytes_atomic(path, serialize_parquet(table, schema, path, ROW_GROUP_ROWS))
    return path


def check_merged(fs, path: str, table: pa.Table) -> None:
    """Step 2: the written file reads back whole (page CRCs) and holds exactly ``table``."""
    with fs.open_input_file(path) as handle:
        back = pq.ParquetFile(handle, page_checksum_verification=True).read()
    if not back.equals(table.cast(back.schema)):
        raise StoreError(f"{fs.display(path)}: the merged shard does not read back as written")


def write_journal(fs, folder: str, merged: str, sources: list[str]) -> None:
    """Step 3."""
    record = {"merged": merged, "sources": sources}
    fs.write_bytes_atomic(f"{folder}/journal.json", json.dumps(record).encode())


def stash_sources(fs, folder: str, sources: list[str]) -> None:
    """Step 4."""
    for name in sources:
        fs.move(f"{MODELS_DIR}/{name}", f"{folder}/old/{name}")


def publish(fs, path: str, merged: str) -> None:
    """Step 5."""
    fs.move(path, f"{MODELS_DIR}/{merged}")


def merge_group(run, names: list[str], n_train: int, n_eval: int) -> str:
    """Merge the shards ``names`` into one (steps 1-6); returns the merged shard's name."""
    fs = run.fs
    table, schema = _merged_table(fs, names, n_train, n_eval)
    merged = shard_name(table.column("model_id").to_numpy())
    if fs.isfile(f"{MODELS_DIR}/{merged}"):
        raise StoreError(f"{merged} exists already")
    folder = _group_dir(merged)
    fs.delete_dir(folder)  # garbage of a crash before its journal
    path = write_merged(fs, folder, table, schema)
    check_merged(fs, path, table)
    write_journal(fs, folder, merged, names)
    stash_sources(fs, folder, names)
    publish(fs, path, merged)
    _clean(fs, folder)
    return merged


def plan_groups(
    names: list[str], rows: dict[str, int], sizes: dict[str, int], target_rows, target_bytes
) -> list[list[str]]:
    """Consecutive runs of ``names`` of about the target size (groups of one are dropped)."""
    groups, current, n_rows, n_bytes = [], [], 0, 0
    for name in names:
        if target_rows is not None:
            full = n_rows + rows[name] > target_rows
        else:
            full = n_bytes + sizes[name] > target_bytes
        if current and full:
            groups.append(current)
            current, n_rows, n_bytes = [], 0, 0
        current.append(name)
        n_rows, n_bytes = n_rows + rows[name], n_bytes + sizes[name]
    groups.append(current)
    return [group for group in groups if len(group) > 1]


def compact_models(
    run, target_rows: int | None = None, target_bytes: int = DEFAULT_TARGET_BYTES
) -> CompactSummary:
    """Merge the usable, problem-free shards of ``models/`` into shards of about
    ``target_rows`` models (or ``target_bytes`` bytes); shards with any problem (torn,
    foreign, duplicate, ...) are left alone for `verify`. The caller holds the writer lock."""
    if target_rows is not None and target_rows < 1:
        raise StoreError(f"--rows must be at least 1, got {target_rows}")
    summary = CompactSummary(recovered=recover_compaction(run))
    n_train, n_eval = run.sizes()
    infos, problems = scan_shards(run, n_train, n_eval)
    troubled = {posixpath.basename(p.file) for p in problems} | {
        posixpath.basename(p.message.rsplit(" ", 1)[-1]) for p in problems if p.kind == "duplicate"
    }
    summary.shards_before = len(infos)
    summary.skipped = [f"{p.file}: {p.kind}" for p in problems]
    usable = [i for i in infos if i.usable and i.model_ids is not None and i.name not in troubled]
    rows = {i.name: len(i.model_ids) for i in usable}
    summary.models = sum(len(i.model_ids) for i in infos if i.model_ids is not None)
    sizes = {name: size for name, size, _ in run.fs.stats(MODELS_DIR, ".parquet")}
    for group in plan_groups([i.name for i in usable], rows, sizes, target_rows, target_bytes):
        try:
            merge_group(run, group, n_train, n_eval)
        except (pa.ArrowException, StoreError) as exc:  # a source changed or a page is bad
            summary.skipped.append(f"{group[0]} .. {group[-1]}: {first_line(exc)}")
            recover_compaction(run)
            continue
        summary.merged += 1
    if not run.fs.entries(COMPACTING_DIR):
        run.fs.delete_dir(COMPACTING_DIR)
    summary.shards_after = len(run.shard_files())
    return summary
