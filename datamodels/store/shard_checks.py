"""Reading one shard (or table) on its own and naming what is wrong with it.

`inspect_shard` reads a shard's footer, and as asked its ``model_id`` column or every page
(each checked against its CRC); `duplicate_problems` finds ids stored twice; `read_checked`
reads any table the same way. `datamodels.store.verify` builds the run-wide checks on these.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.errors import StoreError
from datamodels.store.fs import RunFS
from datamodels.store.problems import QUARANTINE_FIX, UNUSABLE_KINDS, Problem, first_line
from datamodels.store.provenance import PlanCheck, foreign_problems, recorded_config_hash
from datamodels.store.schemas import (
    EXAMPLES_PATH,
    MODELS_DIR,
    column_problems,
    models_schema,
    version_problem,
)

_MAX_THREADS = 8


@dataclass
class ShardInfo:
    """What reading one shard found: its model ids (when readable) and its problems."""

    name: str
    model_ids: np.ndarray | None
    problems: list[Problem] = field(default_factory=list)
    hashed: bool = True  # its footer records a config_hash (False: written without one)

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
            hashed = recorded_config_hash(schema) is not None
            if problems or not read_ids:
                return ShardInfo(name, None, problems, hashed)
            try:
                table = parquet_file.read(columns=None if full or plan else ["model_id"])
            except (pa.ArrowException, OSError) as exc:
                return ShardInfo(name, None, [corrupt_problem(rel_path, exc)], hashed)
            rows = parquet_file.metadata.num_rows
    except (pa.ArrowException, OSError, StoreError) as exc:
        return ShardInfo(name, None, [_torn(runfs, rel_path, exc)])
    ids = table.column("model_id").to_numpy().astype(np.int64, copy=False)
    if ids.shape[0] != rows:
        message = f"read {ids.shape[0]} rows, footer says {rows}"
        return ShardInfo(name, None, [Problem(rel_path, "torn", message)], hashed)
    return ShardInfo(
        name, ids, plan.problems(rel_path, table) if plan is not None else [], hashed
    )


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
