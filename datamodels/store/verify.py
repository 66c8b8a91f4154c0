"""Checking a run directory: every problem reported by file name, none silently mixed in.

`verify` reads each file on its own (Parquet footer, plus the ``model_id`` column of each
shard) so one bad file never hides another, and returns a list of `Problem`:

- ``missing``   ``config.yaml`` or ``examples.parquet`` is absent;
- ``torn``      a file is not readable Parquet (truncated, a partial copy, ...);
- ``schema``    wrong columns / types, or a schema_version this release cannot read;
- ``length``    a shard's ``mask`` length differs from n_train or its ``margins`` length from
                n_eval (both from ``examples.parquet``; read from the schema, not the data);
- ``duplicate`` a model_id in two shards (both named) or twice in one.

`valid_shards` / `scan_shards` are what the driver uses on resume: which shards it can trust
and what it should quarantine, without raising.
"""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.errors import StoreError
from datamodels.store.fs import RunFS
from datamodels.store.schemas import (
    CONFIG_PATH,
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    EXAMPLES_PATH,
    EXAMPLES_SCHEMA,
    FAILURES_PATH,
    FAILURES_SCHEMA,
    MODELS_DIR,
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

KINDS = ("missing", "torn", "schema", "length", "duplicate")
UNUSABLE_KINDS = frozenset({"torn", "schema", "length"})
_MAX_THREADS = 8


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of a run (``file`` is relative to the run directory)."""

    file: str
    kind: str
    message: str
    model_ids: tuple[int, ...] | None = None

    def __str__(self) -> str:
        return f"{self.file}: {self.kind}: {self.message}"


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


def inspect_shard(
    runfs: RunFS, name: str, n_train: int | None, n_eval: int | None, read_ids: bool = True
) -> ShardInfo:
    """Read one shard's footer (and ``model_id`` column) and report what is wrong with it."""
    rel_path = f"{MODELS_DIR}/{name}"
    try:
        with runfs.open_input_file(rel_path) as handle:
            parquet_file = pq.ParquetFile(handle)
            problems = shard_schema_problems(rel_path, parquet_file.schema_arrow, n_train, n_eval)
            if problems or not read_ids:
                return ShardInfo(name, None, problems)
            ids = parquet_file.read(columns=["model_id"]).column(0).to_numpy()
            if ids.shape[0] != parquet_file.metadata.num_rows:
                message = f"read {ids.shape[0]} rows, footer says {parquet_file.metadata.num_rows}"
                return ShardInfo(name, None, [Problem(rel_path, "torn", message)])
            return ShardInfo(name, ids.astype(np.int64, copy=False))
    except (pa.ArrowException, OSError, StoreError) as exc:
        return ShardInfo(name, None, [_torn(runfs, rel_path, exc)])


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


def run_sizes(run: Run) -> tuple[int | None, int | None, list[Problem]]:
    """(n_train, n_eval, problems of examples.parquet); sizes are None when it is unusable."""
    if not run.fs.isfile(EXAMPLES_PATH):
        message = f"{EXAMPLES_PATH} is absent; run `datamodels prepare` to write it"
        return None, None, [Problem(EXAMPLES_PATH, "missing", message)]
    try:
        with run.fs.open_input_file(EXAMPLES_PATH) as handle:
            parquet_file = pq.ParquetFile(handle)
            problems = _schema_problems(EXAMPLES_PATH, parquet_file.schema_arrow, EXAMPLES_SCHEMA)
            if problems:
                return None, None, problems
            positions = parquet_file.read(columns=["train_position", "eval_position"])
    except (pa.ArrowException, OSError) as exc:
        return None, None, [_torn(run.fs, EXAMPLES_PATH, exc)]
    n_train = len(positions) - positions.column("train_position").null_count
    n_eval = len(positions) - positions.column("eval_position").null_count
    return n_train, n_eval, []


def scan_shards(
    run: Run, n_train: int | None = None, n_eval: int | None = None
) -> tuple[list[ShardInfo], list[Problem]]:
    """Inspect every shard in ``models/``: per-shard infos and all shard problems (duplicates too).

    ``n_train``/``n_eval`` default to the sizes in ``examples.parquet`` (length checks are
    skipped when it is unusable; `verify` reports that separately).
    """
    if n_train is None and n_eval is None:
        n_train, n_eval, _ = run_sizes(run)
    names = run.shard_files()
    infos = _map_threads(lambda name: inspect_shard(run.fs, name, n_train, n_eval), names)
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
    try:
        with runfs.open_input_file(rel_path) as handle:
            parquet_file = pq.ParquetFile(handle)
            return _schema_problems(rel_path, parquet_file.schema_arrow, expected)
    except (pa.ArrowException, OSError, StoreError) as exc:
        return [_torn(runfs, rel_path, exc)]


def _scores_problems(runfs: RunFS, rel_path: str, n_train: int | None) -> list[Problem]:
    try:
        with runfs.open_input_file(rel_path) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
    except (pa.ArrowException, OSError, StoreError) as exc:
        return [_torn(runfs, rel_path, exc)]
    size = _list_size(schema, "scores")
    problems = _schema_problems(rel_path, schema, scores_schema(size if size is not None else 0))
    return problems or _length_problem(rel_path, "scores", size, n_train, "n_train")


def verify(run: Run) -> list[Problem]:
    """Every problem in the run directory, each naming its file (empty list: all good)."""
    problems: list[Problem] = []
    if not run.fs.isfile(CONFIG_PATH):
        problems.append(Problem(CONFIG_PATH, "missing", f"{CONFIG_PATH} is absent"))
    n_train, n_eval, example_problems = run_sizes(run)
    problems.extend(example_problems)
    problems.extend(scan_shards(run, n_train, n_eval)[1])
    for rel_path, expected in (
        (FAILURES_PATH, FAILURES_SCHEMA),
        (WEIGHTS_PATH, WEIGHTS_SCHEMA),
        (TARGETS_PATH, TARGETS_SCHEMA),
        (EVALUATION_PATH, EVALUATION_SCHEMA),
    ):
        if run.fs.isfile(rel_path):
            problems.extend(_table_problems(run.fs, rel_path, expected))
    for name in run.fs.listdir(SCORES_DIR):
        problems.extend(_scores_problems(run.fs, posixpath.join(SCORES_DIR, name), n_train))
    return problems


def format_problems(problems: list[Problem], limit: int = 20) -> str:
    """Problems as lines for an error message, with the fix."""
    lines = [str(problem) for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"... and {len(problems) - limit} more")
    lines.append("run `datamodels verify` for the full list; quarantine torn or wrong shards")
    return "\n".join(lines)
