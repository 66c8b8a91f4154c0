"""Writing tables: conform to a schema, serialise to Parquet in memory, validate, write atomically.

Owns the write path of every table in the run directory: a Ray task builds its
K models' rows with `models_table`, and `write_model_shard` writes them to
``models/<shard_name>``; the name is a pure function of the model ids, so a retried task
rewrites the same file instead of adding a second copy. Also owns the reverse conversion of
fixed-size-list columns to 2-D numpy arrays (`fixed_size_list_to_numpy`).

Integrity (every shard records the run's config hash and is checksummed): every table is
written with Parquet page checksums (CRC32 per page, checked by the readers and by `verify`),
and a model shard records the run's config hash under the Parquet key-value metadata key
``config_hash``. Both are metadata additions only, and files written before them (no
checksums, no ``config_hash``) still read and verify.

Provenance: a shard's ``trainer`` column names the trainer code (path@version,
``trainers.versions``) that made each model; shards written before it (schema_version 2 and
earlier) lack the column and read the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datamodels.errors import StoreError
from datamodels.store.fs import RunFS
from datamodels.store.schema_checks import with_versions
from datamodels.store.schemas import MODELS_DIR, check_schema, models_written_schema

COMPRESSION = "zstd"
CONFIG_HASH_KEY = b"config_hash"


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether casting ``source`` to ``target`` keeps the meaning
    (int -> float yes, int -> str no)."""
    if pa.types.is_null(source) or source.equals(target):
        return True
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_floating(target):
        return pa.types.is_integer(source) or pa.types.is_floating(source)
    if pa.types.is_string(target) or pa.types.is_large_string(target):
        return (
            pa.types.is_string(source)
            or pa.types.is_large_string(source)
            or pa.types.is_string_view(source)
        )
    if pa.types.is_fixed_size_list(target):
        is_list = (
            pa.types.is_fixed_size_list(source)
            or pa.types.is_list(source)
            or pa.types.is_large_list(source)
        )
        return is_list and _castable(source.value_type, target.value_type)
    return False


def conform_table(table: pa.Table | pd.DataFrame, schema: pa.Schema, name: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, order, types and metadata.

    Missing nullable columns are filled with nulls; extra columns, missing required columns,
    types that do not cast without changing meaning, and nulls in required columns raise
    `StoreError` naming ``name`` and the column.
    """
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    extra = [column for column in table.column_names if schema.get_field_index(column) < 0]
    if extra:
        raise StoreError(f"{name}: unexpected column(s) {extra}; the schema has {schema.names}")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise StoreError(f"{name}: required column {field.name!r} is missing")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not _castable(column.type, field.type):
            raise StoreError(
                f"{name}: column {field.name!r} has type {column.type}, expected {field.type}"
            )
        try:
            column = column.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise StoreError(
                f"{name}: column {field.name!r} cannot be cast to {field.type}: {exc}"
            ) from exc
        if not field.nullable and column.null_count:
            raise StoreError(
                f"{name}: column {field.name!r} has {column.null_count} null(s) but is required"
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _parquet_options(schema: pa.Schema) -> dict:
    # Dictionary encoding and min/max statistics only pay off on the scalar columns; on the
    # n_train / n_eval wide list columns they cost time and footer bytes for nothing.
    scalar = [field.name for field in schema if not pa.types.is_fixed_size_list(field.type)]
    strings = [field.name for field in schema if pa.types.is_string(field.type)]
    return {
        "compression": COMPRESSION,
        "use_dictionary": strings,
        "write_statistics": scalar,
        # A CRC32 per page: a flipped byte inside a page fails the read instead of decoding
        # into plausible-looking garbage (readers verify them; old files without are accepted).
        "write_page_checksum": True,
    }


def serialize_parquet(
    table: pa.Table, schema: pa.Schema, name: str, row_group_size: int | None = None
) -> pa.Buffer:
    """Parquet bytes of ``table`` (already conformed), re-read to check row count and schema."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, **_parquet_options(schema))
    buffer = sink.getvalue()
    parquet_file = pq.ParquetFile(pa.BufferReader(buffer))
    if parquet_file.metadata.num_rows != table.num_rows:
        raise StoreError(
            f"{name}: serialised {parquet_file.metadata.num_rows} rows, expected {table.num_rows}"
        )
    check_schema(parquet_file.schema_arrow, schema, name)
    return buffer


def write_table_atomic(
    runfs: RunFS, rel_path: str, table: pa.Table | pd.DataFrame, schema: pa.Schema,
    versions: dict[str, int] | None = None,
) -> int:
    """Write ``table`` as ``rel_path`` (zstd Parquet, validated, atomic); return bytes written.
    ``versions``: the code versions of the table's producers, recorded in its key-value
    metadata (``datamodels.versions``, `schema_checks.versions_of`)."""
    conformed = with_versions(conform_table(table, schema, rel_path), versions)
    buffer = serialize_parquet(conformed, schema, rel_path)
    runfs.write_bytes_atomic(rel_path, buffer)
    return buffer.size


def shard_name(model_ids: Sequence[int] | np.ndarray) -> str:
    """Deterministic shard file name for a set of model ids (independent of their order).

    ``part-{min:09d}-{max:09d}-{sha1(sorted ids)[:10]}.parquet``: the zero-padded range makes
    names sort by model id; the hash tells apart shards with the same range.
    """
    ids = np.unique(np.asarray(model_ids, dtype=np.int64))
    if ids.size == 0:
        raise StoreError("shard_name needs at least one model_id")
    if ids.size != np.asarray(model_ids).size:
        raise StoreError("shard_name: model_ids contain duplicates")
    digest = hashlib.sha1(",".join(map(str, ids.tolist())).encode()).hexdigest()[:10]
    return f"part-{ids[0]:09d}-{ids[-1]:09d}-{digest}.parquet"


def _column(values: object, rows: int, dtype: np.dtype | type, name: str) -> np.ndarray:
    """A length-``rows`` numpy column from a scalar (broadcast) or a sequence."""
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 0:
        return np.full(rows, array, dtype=dtype)
    if array.shape != (rows,):
        raise StoreError(f"models_table: {name} has shape {array.shape}, expected ({rows},)")
    return array


def fixed_size_list_array(matrix: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    """A fixed_size_list column from a 2-D array ``[rows, width]`` (one buffer, no row loop)."""
    rows, width = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1), type=value_type)
    if width == 0:
        # from_arrays cannot infer the row count of zero-width lists.
        return pa.array([[]] * rows, type=pa.list_(value_type, 0))
    return pa.FixedSizeListArray.from_arrays(values, width)


def models_table(
    model_ids: Sequence[int] | np.ndarray,
    plan: str | Sequence[str],
    alphas: float | Sequence[float] | np.ndarray,
    seeds: int | Sequence[int] | np.ndarray,
    masks: np.ndarray,
    margins: np.ndarray,
    train_loss: float | Sequence[float] | np.ndarray,
    eval_accuracy: float | Sequence[float] | np.ndarray,
    seconds: float | Sequence[float] | np.ndarray,
    attempt: int | Sequence[int] | np.ndarray,
    worker: str | Sequence[str] | None,
    trainer: str | None = None,
) -> pa.Table:
    """The ``models/`` rows of K models (schema `models_written_schema`).

    ``masks: bool[K, n_train]``, ``margins: float32[K, n_eval]``; every other argument is a
    length-K sequence or a scalar shared by all K rows. ``trainer``: the label of the trainer
    code that made them (``trainers.versions.trainer_label``; None: not recorded).
    """
    ids = np.asarray(model_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise StoreError(f"models_table: model_ids must be 1-D, got shape {ids.shape}")
    rows = ids.shape[0]
    masks = np.asarray(masks, dtype=np.bool_)
    margins = np.asarray(margins, dtype=np.float32)
    if masks.ndim != 2 or masks.shape[0] != rows:
        raise StoreError(f"models_table: masks has shape {masks.shape}, expected ({rows}, n_train)")
    if margins.ndim != 2 or margins.shape[0] != rows:
        raise StoreError(
            f"models_table: margins has shape {margins.shape}, expected ({rows}, n_eval)"
        )
    schema = models_written_schema(masks.shape[1], margins.shape[1])
    plans = [plan] * rows if isinstance(plan, str) else list(plan)
    workers = [worker] * rows if worker is None or isinstance(worker, str) else list(worker)
    if len(plans) != rows or len(workers) != rows:
        raise StoreError(f"models_table: plan and worker need {rows} entries")
    arrays = [
        pa.array(ids),
        pa.array(plans, type=pa.string()),
        pa.array(_column(alphas, rows, np.float32, "alphas")),
        pa.array(_column(seeds, rows, np.int64, "seeds")),
        fixed_size_list_array(masks, pa.bool_()),
        fixed_size_list_array(margins, pa.float32()),
        pa.array(_column(train_loss, rows, np.float32, "train_loss")),
        pa.array(_column(eval_accuracy, rows, np.float32, "eval_accuracy")),
        pa.array(_column(seconds, rows, np.float32, "seconds")),
        pa.array(_column(attempt, rows, np.int32, "attempt")),
        pa.array(workers, type=pa.string()),
        pa.array([trainer] * rows, type=pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_model_shard(
    runfs: RunFS, table: pa.Table, config_hash: str | None = None
) -> tuple[str, int]:
    """Write a `models_table` as ``models/<shard_name>``; return (relative path, bytes written).

    ``config_hash`` (the run's `Config.hash`) is recorded in the file's key-value metadata
    (key ``config_hash``), so `verify` can tell a shard copied from another run.
    """
    if config_hash is not None and (not isinstance(config_hash, str) or not config_hash):
        raise StoreError(
            f"write_model_shard: config_hash must be a non-empty string, got {config_hash!r}"
        )
    mask_type = table.schema.field("mask").type
    margins_type = table.schema.field("margins").type
    if not (pa.types.is_fixed_size_list(mask_type) and pa.types.is_fixed_size_list(margins_type)):
        raise StoreError("write_model_shard: mask and margins must be fixed_size_list columns")
    schema = models_written_schema(mask_type.list_size, margins_type.list_size)
    if config_hash is not None:
        schema = schema.with_metadata({**schema.metadata, CONFIG_HASH_KEY: config_hash.encode()})
    ids = table.column("model_id").to_numpy()
    rel_path = f"{MODELS_DIR}/{shard_name(ids)}"
    return rel_path, write_table_atomic(runfs, rel_path, table, schema)


def fixed_size_list_to_numpy(column: pa.ChunkedArray | pa.Array, dtype: type) -> np.ndarray:
    """``dtype[rows, list_size]`` from a fixed_size_list column, via each chunk's flat values."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    width = column.type.list_size
    out = np.empty((len(column), width), dtype=dtype)
    if width == 0:
        return out
    start = 0
    for chunk in chunks:
        if chunk.null_count:
            raise StoreError(f"a {column.type} column holds null rows; cannot make an array")
        # .values ignores the chunk's own offset, so slice the flat child by hand.
        flat = chunk.values.slice(chunk.offset * width, len(chunk) * width)
        out[start : start + len(chunk)] = flat.to_numpy(zero_copy_only=False).reshape(-1, width)
        start += len(chunk)
    return out
