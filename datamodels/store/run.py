"""`Run`: the facade over one run directory (DESIGN §3). Readers return numpy, pandas or Arrow.

Every stage reads and writes the run through this class; the table layout and schemas live in
`datamodels.store.schemas`, the write path in `datamodels.store.shards`, and the checks in
`datamodels.store.verify`. Readers never mix in a torn, wrong-schema or duplicated shard:
they raise `StoreError` naming the file instead.
"""

from __future__ import annotations

import os
import posixpath
import re
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
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
    INVALID_DIR,
    MODELS_DIR,
    SCORES_DIR,
    TARGETS_PATH,
    TARGETS_SCHEMA,
    WEIGHTS_PATH,
    WEIGHTS_SCHEMA,
    check_schema,
    models_schema,
    scores_schema,
)
from datamodels.store.shards import (
    conform_table,
    fixed_size_list_array,
    fixed_size_list_to_numpy,
    write_model_shard,
    write_table_atomic,
)
from datamodels.store.verify import (
    Problem,
    format_problems,
    scan_shards,
    shard_schema_problems,
    valid_shards,
)

_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ARRAY_DTYPES = {"mask": np.bool_, "margins": np.float32}


def _to_pandas(table: pa.Table, schema: pa.Schema) -> pd.DataFrame:
    """A DataFrame in which nullable integer columns stay integers (pandas ``Int64``, not float)."""
    nullable_int = {pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}
    columns = {}
    for name in table.column_names:
        field = schema.field(name) if schema.get_field_index(name) >= 0 else None
        column = table.column(name)
        if field is not None and field.nullable and column.type in nullable_int:
            columns[name] = column.to_pandas(types_mapper=nullable_int.get)
        else:
            columns[name] = column.to_pandas()
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def _as_list(plan: str | list[str] | None) -> list[str] | None:
    return [plan] if isinstance(plan, str) else (None if plan is None else list(plan))


class Run:
    """A run directory: ``Run("runs/cifar")`` or ``Run("s3://bucket/runs/cifar")``."""

    config_path = CONFIG_PATH

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.uri: str = os.fspath(uri)
        self.fs: RunFS = RunFS(self.uri)
        self._sizes: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Run({self.uri!r})"

    def local_path(self, rel_path: str) -> str | None:
        """Absolute local path of ``rel_path`` for a local run; None on an object store."""
        return self.fs.join(rel_path) if self.fs.is_local else None

    # -- config ------------------------------------------------------------------------------

    def has_config(self) -> bool:
        return self.fs.isfile(CONFIG_PATH)

    def read_config_text(self) -> str:
        if not self.has_config():
            raise StoreError(f"{self.fs.display(CONFIG_PATH)} does not exist; is this a run?")
        return self.fs.read_bytes(CONFIG_PATH).decode("utf-8")

    def write_config(self, text: str) -> None:
        self.fs.write_bytes_atomic(CONFIG_PATH, text.encode("utf-8"))

    # -- any table ---------------------------------------------------------------------------

    def read_table(
        self, rel_path: str, schema: pa.Schema | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Read one Parquet table; with ``schema``, check it and return its columns in order."""
        display = self.fs.display(rel_path)
        try:
            with self.fs.open_input_file(rel_path) as handle:
                parquet_file = pq.ParquetFile(handle)
                if schema is not None:
                    check_schema(parquet_file.schema_arrow, schema, display)
                    columns = columns or schema.names
                return parquet_file.read(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{display} is not readable Parquet (torn?): {exc}") from exc

    def write_table(self, rel_path: str, table: pa.Table | pd.DataFrame, schema: pa.Schema) -> int:
        """Validate ``table`` against ``schema`` and write it atomically; return bytes written."""
        return write_table_atomic(self.fs, rel_path, table, schema)

    # -- examples ----------------------------------------------------------------------------

    def write_examples(self, table: pa.Table | pd.DataFrame) -> int:
        self._sizes = None
        return self.write_table(EXAMPLES_PATH, table, EXAMPLES_SCHEMA)

    def examples(self) -> pd.DataFrame:
        """``examples.parquet``: index, split, label, original_label, eval/train positions."""
        self._require(EXAMPLES_PATH, "run `datamodels prepare` first")
        return _to_pandas(self.read_table(EXAMPLES_PATH, EXAMPLES_SCHEMA), EXAMPLES_SCHEMA)

    def sizes(self) -> tuple[int, int]:
        """(n_train, n_eval): the non-null train/eval positions in ``examples.parquet``."""
        if self._sizes is None:
            self._require(EXAMPLES_PATH, "run `datamodels prepare` first")
            positions = self.read_table(
                EXAMPLES_PATH, EXAMPLES_SCHEMA, columns=["train_position", "eval_position"]
            )
            self._sizes = (
                len(positions) - positions.column("train_position").null_count,
                len(positions) - positions.column("eval_position").null_count,
            )
        return self._sizes

    @property
    def n_train(self) -> int:
        return self.sizes()[0]

    @property
    def n_eval(self) -> int:
        return self.sizes()[1]

    def _require(self, rel_path: str, fix: str) -> None:
        if not self.fs.isfile(rel_path):
            raise StoreError(f"{self.fs.display(rel_path)} does not exist; {fix}")

    # -- models ------------------------------------------------------------------------------

    def shard_files(self) -> list[str]:
        """Sorted names of the shards in ``models/`` (hidden and ``_`` names excluded)."""
        return [
            name
            for name in self.fs.listdir(MODELS_DIR, ".parquet")
            if not name.startswith((".", "_"))
        ]

    def write_models(self, table: pa.Table) -> str:
        """Write a `models_table` as its deterministic shard; return its relative path."""
        return write_model_shard(self.fs, table)[0]

    def _models_dataset(self) -> ds.Dataset | None:
        names = self.shard_files()
        if not names:
            return None
        n_train, n_eval = self.sizes()
        paths = [self.fs.join(MODELS_DIR, name) for name in names]
        dataset = ds.dataset(
            paths,
            schema=models_schema(n_train, n_eval),
            format="parquet",
            filesystem=self.fs.filesystem,
        )
        # The dataset would fill a missing column with nulls; check every footer first.
        problems: list[Problem] = []
        for fragment in dataset.get_fragments():
            rel_path = f"{MODELS_DIR}/{posixpath.basename(fragment.path)}"
            try:
                physical = fragment.physical_schema
            except (pa.ArrowException, OSError) as exc:
                problems.append(Problem(rel_path, "torn", f"not readable Parquet: {exc}"))
                continue
            problems.extend(shard_schema_problems(rel_path, physical, n_train, n_eval))
        if problems:
            raise StoreError(
                f"{self.fs.display(MODELS_DIR)} has bad shards:\n" + format_problems(problems)
            )
        return dataset

    def _read_models(self, plan: str | list[str] | None, columns: list[str]) -> pa.Table:
        """Rows of the selected plans, ``columns`` (model_id first), in file order."""
        dataset = self._models_dataset()
        if dataset is None:
            return models_schema(*self.sizes()).empty_table().select(columns)
        plans = _as_list(plan)
        row_filter = None if plans is None else pc.field("plan").isin(plans)
        try:
            table = dataset.to_table(columns=columns, filter=row_filter)
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"reading {self.fs.display(MODELS_DIR)} failed: {exc}") from exc
        ids = table.column("model_id").to_numpy()
        if np.unique(ids).size != ids.size:
            problems = [p for p in scan_shards(self)[1] if p.kind == "duplicate"]
            raise StoreError("duplicate model_ids in models/:\n" + format_problems(problems))
        return table

    @staticmethod
    def _order(ids: np.ndarray) -> np.ndarray | None:
        """Permutation sorting ``ids``, or None when they are already sorted (the usual case)."""
        if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
            return None
        return np.argsort(ids, kind="stable")

    def models(
        self, plan: str | list[str] | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The ``models/`` rows of ``plan`` (one name, several, or all), sorted by model_id."""
        names = models_schema(0, 0).names
        columns = list(columns) if columns is not None else names
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise StoreError(f"models has no column(s) {unknown}; its columns are {names}")
        read = columns if "model_id" in columns else ["model_id", *columns]
        table = self._read_models(plan, read)
        order = self._order(table.column("model_id").to_numpy())
        if order is not None:
            table = table.take(order)
        return table.select(columns)

    def _arrays(self, plan: str | list[str] | None, columns: list[str]) -> list[np.ndarray]:
        table = self._read_models(plan, ["model_id", *columns])
        ids = table.column("model_id").to_numpy()
        order = self._order(ids)
        arrays = [ids]
        for column in columns:
            array = fixed_size_list_to_numpy(table.column(column), _ARRAY_DTYPES[column])
            arrays.append(array if order is None else array[order])
        return arrays if order is None else [ids[order], *arrays[1:]]

    def model_ids(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``int64[m]``: model ids of ``plan``, sorted."""
        return self._arrays(plan, [])[0]

    def masks(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``bool[m, n_train]``: subset masks in model_id order."""
        return self._arrays(plan, ["mask"])[1]

    def margins(self, plan: str | list[str] | None = None) -> np.ndarray:
        """``float32[m, n_eval]``: eval margins in model_id order."""
        return self._arrays(plan, ["margins"])[1]

    def masks_and_margins(
        self, plan: str | list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(``bool[m, n_train]``, ``float32[m, n_eval]``) read in one pass, model_id order."""
        _, masks, margins = self._arrays(plan, ["mask", "margins"])
        return masks, margins

    def valid_shards(self) -> tuple[list[str], list[Problem]]:
        """(names of usable shards, shard problems); never raises. See `verify.valid_shards`."""
        return valid_shards(self)

    def done_model_ids(self) -> set[int]:
        """Model ids in usable shards (reads only each shard's footer and ``model_id`` column)."""
        infos, _ = scan_shards(self)
        done: set[int] = set()
        for info in infos:
            if info.usable and info.model_ids is not None:
                done.update(info.model_ids.tolist())
        return done

    def quarantine(self, shard_name: str, reason: str) -> str:
        """Move a bad shard to ``models/_invalid/`` (never deleted) with a ``.reason.txt``.

        Its models count as not done, so a resumed run retrains them. Returns the new path.
        """
        name = posixpath.basename(shard_name)
        source = f"{MODELS_DIR}/{name}"
        self._require(source, "nothing to quarantine")
        stem, extension = posixpath.splitext(name)
        target, copy = f"{INVALID_DIR}/{name}", 0
        while self.fs.exists(target):
            copy += 1
            target = f"{INVALID_DIR}/{stem}.{copy}{extension}"
        self.fs.move(source, target)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        note = f"quarantined {source} at {stamp}: {reason}\n"
        self.fs.write_bytes_atomic(f"{target}.reason.txt", note.encode("utf-8"))
        return target

    # -- failures ----------------------------------------------------------------------------

    def failures(self) -> pd.DataFrame:
        """``failures.parquet`` (empty, with its columns, when nothing has failed)."""
        if not self.fs.isfile(FAILURES_PATH):
            return _to_pandas(FAILURES_SCHEMA.empty_table(), FAILURES_SCHEMA)
        return _to_pandas(self.read_table(FAILURES_PATH, FAILURES_SCHEMA), FAILURES_SCHEMA)

    def append_failures(self, rows: pd.DataFrame | pa.Table) -> int:
        """Rewrite ``failures.parquet`` atomically as old rows + ``rows`` (single writer: the driver)."""
        new = conform_table(rows, FAILURES_SCHEMA, FAILURES_PATH)
        if self.fs.isfile(FAILURES_PATH):
            old = conform_table(
                self.read_table(FAILURES_PATH, FAILURES_SCHEMA), FAILURES_SCHEMA, FAILURES_PATH
            )
            new = pa.concat_tables([old, new])
        return self.write_table(FAILURES_PATH, new, FAILURES_SCHEMA)

    # -- fit / estimate / evaluate outputs ---------------------------------------------------

    def weights(self) -> pd.DataFrame:
        """``datamodels/weights.parquet``: one row per nonzero (target, train_position) weight."""
        self._require(WEIGHTS_PATH, "run `datamodels fit` first")
        return _to_pandas(self.read_table(WEIGHTS_PATH, WEIGHTS_SCHEMA), WEIGHTS_SCHEMA)

    def targets(self) -> pd.DataFrame:
        """``datamodels/targets.parquet``: per-target bias, lambda and validation fit."""
        self._require(TARGETS_PATH, "run `datamodels fit` first")
        return _to_pandas(self.read_table(TARGETS_PATH, TARGETS_SCHEMA), TARGETS_SCHEMA)

    def evaluation(self) -> pd.DataFrame:
        """``evaluation.parquet``: one row per (method, metric)."""
        self._require(EVALUATION_PATH, "run `datamodels evaluate` first")
        return _to_pandas(self.read_table(EVALUATION_PATH, EVALUATION_SCHEMA), EVALUATION_SCHEMA)

    def score_methods(self) -> list[str]:
        """Methods with a ``scores/<method>.parquet``, sorted."""
        return [name[: -len(".parquet")] for name in self.fs.listdir(SCORES_DIR)]

    @staticmethod
    def scores_path(method: str) -> str:
        if not _METHOD_NAME.fullmatch(method):
            raise StoreError(
                f"method name {method!r} must be letters, digits and _ (it names a SQL view)"
            )
        return f"{SCORES_DIR}/{method}.parquet"

    def write_scores(
        self,
        method: str,
        targets: np.ndarray,
        scores: np.ndarray,
        stderr: np.ndarray | None = None,
    ) -> int:
        """Write ``scores/<method>.parquet``: ``targets: int[T]``, ``scores: float32[T, n_train]``.

        Sign convention: positive = including the training example raises the target's margin.
        """
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 2 or scores.shape[1] != self.n_train:
            raise StoreError(
                f"{method} scores have shape {scores.shape}, expected (T, n_train={self.n_train})"
            )
        columns = {
            "target": pa.array(np.asarray(targets, dtype=np.int64)),
            "scores": fixed_size_list_array(scores, pa.float32()),
        }
        if stderr is not None:
            columns["stderr"] = fixed_size_list_array(
                np.asarray(stderr, dtype=np.float32), pa.float32()
            )
        return self.write_table(
            self.scores_path(method), pa.table(columns), scores_schema(self.n_train)
        )

    def scores(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(``targets: int64[T]``, ``scores: float32[T, n_train]``) of one method, by target."""
        rel_path = self.scores_path(method)
        self._require(rel_path, f"run the estimate stage for {method!r} first")
        table = self.read_table(rel_path, scores_schema(self.n_train), columns=["target", "scores"])
        targets = table.column("target").to_numpy()
        scores = fixed_size_list_to_numpy(table.column("scores"), np.float32)
        order = np.argsort(targets, kind="stable")
        return targets[order], scores[order]
