"""Checking a run directory: every problem reported by file name, none silently mixed in.

`verify` reads each file on its own (the whole file, every page checked against its CRC
where the writer recorded one) so one bad file never hides another, and returns a list of
`Problem`:

- ``missing``   ``config.yaml`` or ``examples.parquet`` is absent;
- ``config``    ``config.yaml`` is not readable, or its ``config_hash`` does not match its content;
- ``torn``      a file is not readable Parquet (truncated, a partial copy, ...);
- ``corrupt``   the footer reads but a data page does not (a page checksum fails: bytes changed
                after the file was written);
- ``schema``    wrong columns / types, or a schema_version this release cannot read;
- ``length``    a shard's ``mask`` length differs from n_train or its ``margins`` length from
                n_eval (both from ``examples.parquet``; read from the schema, not the data);
- ``foreign``   a shard records another ``config_hash`` than ``config.yaml`` (copied from
                another run);
- ``plan``      a shard's model ids are not in the run's plan, or their masks (or plan names)
                are not what the plan gives them (checked when ``config.yaml`` is a full config:
                masks are a pure function of (config seed, plan, model_id));
- ``duplicate`` a model_id in two shards (both named) or twice in one;
- ``interrupted`` a ``datamodels compact`` stopped half way (its shards wait in
                ``models/_compacting/``; `compact` or `train` finishes or undoes it).

Page checksums and ``config_hash`` are metadata added with schema_version 1 unchanged: files
written before them carry neither, and are accepted (nothing to verify, nothing to compare).

`valid_shards` / `scan_shards` are what the driver uses on resume: which shards it can trust
and what it should quarantine, without raising. They read footers and the ``model_id`` column
only (cheap); the full page and plan checks are `verify`'s.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.errors import StoreError
from datamodels.plans import stored_masks
from datamodels.store.fs import RunFS
from datamodels.store.positions import train_size
from datamodels.store.problems import (
    QUARANTINE_FIX,
    UNUSABLE_KINDS,
    Problem,
    first_line,
)
from datamodels.store.provenance import PlanCheck, foreign_problems, read_config_hash, run_config
from datamodels.store.schemas import (
    COMPACTING_DIR,
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    EXAMPLES_PATH,
    EXAMPLES_SCHEMA,
    FAILURES_PATH,
    FAILURES_SCHEMA,
    MODELS_DIR,
    PLAN_MASKS_DIR,
    REMOVAL_RESULTS_PATH,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_PATH,
    REMOVAL_SETS_SCHEMA,
    SCORES_DIR,
    TARGETS_PATH,
    TARGETS_SCHEMA,
    WEIGHTS_PATH,
    WEIGHTS_SCHEMA,
    column_problems,
    models_schema,
    scores_schema,
    version_problem,
)

if TYPE_CHECKING:
    from datamodels.store.run import Run

_MAX_THREADS = 8
@dataclass
class ShardInfo:
    """What reading one shard found: its model ids (when readable) and its problems."""

    name: str
    model_ids: np.ndarray | None
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(problem.kind in UNUSABLE_KINDS for problem in self.problems)


def _list_size(schema: pa.Schema, column: str) -> int | None:
    index = schema.get_field_index(column)
    if index < 0 or not pa.types.is_fixed_size_list(schema.field(index).type):
        return None
    return schema.field(index).type.list_size


def _schema_problems(rel_path: str, actual: pa.Schema, expected: pa.Schema) -> list[Problem]:
    version = version_problem(actual, "this file")
    if version is not None:
        return [Problem(rel_path, "schema", version)]
    return [Problem(rel_path, "schema", message) for message in column_problems(actual, expected)]


def _length_problem(
    rel_path: str, column: str, actual: int | None, expected: int | None, what: str
) -> list[Problem]:
    if actual is None or expected is None or actual == expected:
        return []
    message = f"{column} has length {actual} but {EXAMPLES_PATH} has {what}={expected}"
    return [Problem(rel_path, "length", message)]


def shard_schema_problems(
    rel_path: str, schema: pa.Schema, n_train: int | None, n_eval: int | None
) -> list[Problem]:
    """Schema and length problems of a models shard, from its Arrow schema alone."""
    mask_size = _list_size(schema, "mask")
    margins_size = _list_size(schema, "margins")
    expected = models_schema(
        mask_size if mask_size is not None else (n_train or 0),
        margins_size if margins_size is not None else (n_eval or 0),
    )
    problems = _schema_problems(rel_path, schema, expected)
    if problems:
        return problems
    return _length_problem(rel_path, "mask", mask_size, n_train, "n_train") + _length_problem(
        rel_path, "margins", margins_size, n_eval, "n_eval"
    )


def _torn(runfs: RunFS, rel_path: str, exc: Exception) -> Problem:
    try:
        size = f"{runfs.size(rel_path)} bytes"
    except (StoreError, OSError):
        size = "size unknown"
    return Problem(rel_path, "torn", f"not readable Parquet ({size}): {exc}")


def corrupt_problem(rel_path: str, exc: BaseException) -> Problem:
    shard = rel_path.startswith(f"{MODELS_DIR}/")
    fix = QUARANTINE_FIX if shard else "re-run the stage that writes it"
    message = (
        f"the footer reads but a data page does not ({first_line(exc)}): the file changed "
        f"after it was written; {fix}"
    )
    return Problem(rel_path, "corrupt", message)


def inspect_shard(
    runfs: RunFS,
    name: str,
    n_train: int | None,
    n_eval: int | None,
    read_ids: bool = True,
    config_hash: str | None = None,
    full: bool = False,
    plan: PlanCheck | None = None,
) -> ShardInfo:
    """Read one shard and report what is wrong with it.

    Always the footer (schema, lengths, recorded ``config_hash`` against ``config_hash``);
    with ``read_ids`` the ``model_id`` column; with ``full`` (or a ``plan``) every column, so
    every page is checked against its CRC, and with ``plan`` the masks against the plan.
    """
    rel_path = f"{MODELS_DIR}/{name}"
    try:
        with runfs.open_input_file(rel_path) as handle:
            parquet_file = pq.ParquetFile(handle, page_checksum_verification=True)
            schema = parquet_file.schema_arrow
            problems = shard_schema_problems(rel_path, schema, n_train, n_eval)
            problems = problems or foreign_problems(rel_path, schema, config_hash)
            if problems or not read_ids:
                return ShardInfo(name, None, problems)
            try:
                table = parquet_file.read(columns=None if full or plan else ["model_id"])
            except (pa.ArrowException, OSError) as exc:
                return ShardInfo(name, None, [corrupt_problem(rel_path, exc)])
            rows = parquet_file.metadata.num_rows
    except (pa.ArrowException, OSError, StoreError) as exc:
        return ShardInfo(name, None, [_torn(runfs, rel_path, exc)])
    ids = table.column("model_id").to_numpy().astype(np.int64, copy=False)
    if ids.shape[0] != rows:
        message = f"read {ids.shape[0]} rows, footer says {rows}"
        return ShardInfo(name, None, [Problem(rel_path, "torn", message)])
    return ShardInfo(name, ids, plan.problems(rel_path, table) if plan is not None else [])


def duplicate_problems(infos: list[ShardInfo]) -> list[Problem]:
    """One ``duplicate`` problem per (first file, later file) pair that share model ids."""
    readable = [info for info in infos if info.model_ids is not None and info.model_ids.size]
    if not readable:
        return []
    ids = np.concatenate([info.model_ids for info in readable])
    file_index = np.repeat(np.arange(len(readable)), [info.model_ids.size for info in readable])
    order = np.argsort(ids, kind="stable")
    ids, file_index = ids[order], file_index[order]
    repeated = np.flatnonzero(ids[1:] == ids[:-1]) + 1
    if repeated.size == 0:
        return []
    # For every row, the position of the first row with the same id (its "original" file).
    group_start = np.maximum.accumulate(
        np.where(np.r_[True, ids[1:] != ids[:-1]], np.arange(ids.size), 0)
    )
    pairs: dict[tuple[int, int], list[int]] = {}
    for position in repeated:
        key = (int(file_index[group_start[position]]), int(file_index[position]))
        pairs.setdefault(key, []).append(int(ids[position]))
    problems = []
    for (first, later), dup_ids in sorted(pairs.items()):
        first_path = f"{MODELS_DIR}/{readable[first].name}"
        later_path = f"{MODELS_DIR}/{readable[later].name}"
        shown = ", ".join(map(str, dup_ids[:10])) + (", ..." if len(dup_ids) > 10 else "")
        if first == later:
            message = f"model_id(s) {shown} appear more than once in this file"
        else:
            message = f"model_id(s) {shown} are also in {first_path}"
        problems.append(Problem(later_path, "duplicate", message, tuple(dup_ids)))
    return problems


def _map_threads(function, items: list) -> list:
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, len(items))) as pool:
        return list(pool.map(function, items))


def read_checked(
    runfs: RunFS,
    rel_path: str,
    schema_problems: Callable[[pa.Schema], list[Problem]],
    columns: list[str] | None = None,
) -> tuple[pa.Table | None, list[Problem]]:
    """(``columns`` of ``rel_path`` (all by default), problems): ``torn`` when the footer does
    not read, ``schema_problems(schema)`` when they are any, ``corrupt`` when a page does not
    read (page checksums verified). The table is None whenever there is a problem."""
    try:
        with runfs.open_input_file(rel_path) as handle:
            parquet_file = pq.ParquetFile(handle, page_checksum_verification=True)
            problems = schema_problems(parquet_file.schema_arrow)
            if problems:
                return None, problems
            try:
                table = parquet_file.read(columns=columns)
            except (pa.ArrowException, OSError) as exc:
                return None, [corrupt_problem(rel_path, exc)]
            rows = parquet_file.metadata.num_rows
    except (pa.ArrowException, OSError, StoreError) as exc:
        return None, [_torn(runfs, rel_path, exc)]
    if table.num_rows != rows:
        return None, [Problem(rel_path, "torn", f"read {table.num_rows} rows, footer says {rows}")]
    return table, []


def run_sizes(run: Run, full: bool = False) -> tuple[int | None, int | None, list[Problem]]:
    """(n_train, n_eval, problems of examples.parquet); sizes are None when it is unusable.

    Reads the two position columns, or (``full``) the whole file, so every page is checked.
    """
    if not run.fs.isfile(EXAMPLES_PATH):
        message = f"{EXAMPLES_PATH} is absent; run `datamodels prepare` to write it"
        return None, None, [Problem(EXAMPLES_PATH, "missing", message)]
    positions, problems = read_checked(
        run.fs,
        EXAMPLES_PATH,
        lambda schema: _schema_problems(EXAMPLES_PATH, schema, EXAMPLES_SCHEMA),
        None if full else ["train_position", "eval_position"],
    )
    if positions is None:
        return None, None, problems
    n_train = train_size(positions.column("train_position"))
    n_eval = len(positions) - positions.column("eval_position").null_count
    return n_train, n_eval, []


def scan_shards(
    run: Run,
    n_train: int | None = None,
    n_eval: int | None = None,
    config_hash: str | None = None,
    full: bool = False,
    plan: PlanCheck | None = None,
) -> tuple[list[ShardInfo], list[Problem]]:
    """Inspect every shard in ``models/``: per-shard infos and all shard problems (duplicates too).

    ``n_train``/``n_eval`` default to the sizes in ``examples.parquet`` (length checks are
    skipped when it is unusable; `verify` reports that separately), ``config_hash`` to the one
    recorded in ``config.yaml``. ``full`` and ``plan``: see `inspect_shard`.
    """
    if n_train is None and n_eval is None:
        n_train, n_eval, _ = run_sizes(run)
    if config_hash is None:
        config_hash = read_config_hash(run)
    names = run.shard_files()
    infos = _map_threads(
        lambda name: inspect_shard(
            run.fs, name, n_train, n_eval, config_hash=config_hash, full=full, plan=plan
        ),
        names,
    )
    problems = [problem for info in infos for problem in info.problems]
    problems.extend(duplicate_problems([info for info in infos if info.usable]))
    return infos, problems


def valid_shards(run: Run) -> tuple[list[str], list[Problem]]:
    """(names of usable shards, all shard problems), never raising.

    Usable means readable, right schema and right lengths. A shard with a ``duplicate``
    problem is still usable (its rows are fine); the problem names both files for a human.
    """
    infos, problems = scan_shards(run)
    return [info.name for info in infos if info.usable], problems


def _table_problems(runfs: RunFS, rel_path: str, expected: pa.Schema) -> list[Problem]:
    return read_checked(
        runfs, rel_path, lambda schema: _schema_problems(rel_path, schema, expected)
    )[1]


def _scores_problems(runfs: RunFS, rel_path: str, n_train: int | None) -> list[Problem]:
    def schema_problems(schema: pa.Schema) -> list[Problem]:
        size = _list_size(schema, "scores")
        expected = scores_schema(size if size is not None else 0)
        problems = _schema_problems(rel_path, schema, expected)
        return problems or _length_problem(rel_path, "scores", size, n_train, "n_train")

    return read_checked(runfs, rel_path, schema_problems)[1]


def interrupted_problems(run: Run) -> list[Problem]:
    """One ``interrupted`` problem per group an interrupted compaction left behind."""
    problems = []
    for entry in run.fs.entries(COMPACTING_DIR):
        path = f"{COMPACTING_DIR}/{entry}"
        message = (
            "an interrupted `datamodels compact` holds shards here; run `datamodels compact` "
            "(or `train`) on the run to finish or undo it"
        )
        problems.append(Problem(path, "interrupted", message))
    return problems


def verify(run: Run) -> list[Problem]:
    """Every problem in the run directory, each naming its file (empty list: all good).

    Reads every file whole, checking each page against its checksum, and (when config.yaml
    is a full config) every shard's masks against the plan.
    """
    config_hash, config, problems = run_config(run)
    n_train, n_eval, example_problems = run_sizes(run, full=True)
    problems.extend(example_problems)
    plan = None
    if config is not None and n_train is not None:
        try:
            stored = stored_masks(config, run)
        except StoreError as exc:
            problems.append(Problem(PLAN_MASKS_DIR, "schema", str(exc)))
            stored = {}
        plan = PlanCheck.of(config, n_train, stored)
    problems.extend(
        scan_shards(run, n_train, n_eval, config_hash=config_hash, full=True, plan=plan)[1]
    )
    problems.extend(interrupted_problems(run))
    for rel_path, expected in (
        (FAILURES_PATH, FAILURES_SCHEMA),
        (WEIGHTS_PATH, WEIGHTS_SCHEMA),
        (TARGETS_PATH, TARGETS_SCHEMA),
        (EVALUATION_PATH, EVALUATION_SCHEMA),
        (REMOVAL_SETS_PATH, REMOVAL_SETS_SCHEMA),
        (REMOVAL_RESULTS_PATH, REMOVAL_RESULTS_SCHEMA),
    ):
        if run.fs.isfile(rel_path):
            problems.extend(_table_problems(run.fs, rel_path, expected))
    for name in run.fs.listdir(SCORES_DIR):
        problems.extend(_scores_problems(run.fs, posixpath.join(SCORES_DIR, name), n_train))
    return problems


