"""`Run`: the facade over one run directory. Readers return numpy, pandas or Arrow.

Every stage reads and writes the run through this class; the table layout and schemas live in
`datamodels.store.schemas`, the write path in `datamodels.store.shards`, and the checks in
`datamodels.store.verify`. Readers never mix in a torn, corrupt, wrong-schema, foreign or
duplicated shard: they raise `StoreError` naming the file instead. Every Parquet page read is
checked against its CRC where the file has one (files written before page checksums read as
before; schema_version stays 1: checksums and the shards' ``config_hash`` are metadata only).
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from datamodels.data.beton import decode_resident
from datamodels.errors import StoreError
from datamodels.plans import plan_masks_path
from datamodels.store.beton import local_beton
from datamodels.store.fs import RunFS
from datamodels.store.identifiers import check_config_hash, check_name
from datamodels.store.models import ModelsTable
from datamodels.store.positions import train_size
from datamodels.store.problems import first_line
from datamodels.store.schema_checks import versions_of
from datamodels.store.schemas import (
    CONFIG_PATH,
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    EXAMPLES_PATH,
    EXAMPLES_SCHEMA,
    FAILURES_PATH,
    FAILURES_SCHEMA,
    PLAN_MASKS_SCHEMA,
    REMOVAL_RESULTS_PATH,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_PATH,
    REMOVAL_SETS_SCHEMA,
    SCORES_DIR,
    SELF_SCORES_DIR,
    SELF_SCORES_SCHEMA,
    SOURCE_CLASSES_PATH,
    TARGETS_PATH,
    TARGETS_SCHEMA,
    WEIGHTS_PATH,
    WEIGHTS_SCHEMA,
    check_schema,
    scores_schema,
)
from datamodels.store.shards import (
    conform_table,
    fixed_size_list_array,
    fixed_size_list_to_numpy,
    write_table_atomic,
)

_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
__all__ = ["Run", "train_size"]  # train_size: read here by older importers
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


class Run(ModelsTable):
    """A run directory: ``Run("runs/cifar")`` or ``Run("s3://bucket/runs/cifar")``;
    ``trust_code``: verbs may import the code its config names (`datamodels.config.trust`)."""

    config_path = CONFIG_PATH

    def __init__(self, uri: str | os.PathLike[str], trust_code: bool = False) -> None:
        self.uri: str = os.fspath(uri)
        self.trust_code = trust_code
        self.fs: RunFS = RunFS(self.uri)
        self._sizes: tuple[int, int] | None = None
        self._config_hash: str | None = None
        self._raw: np.ndarray | None = None  # the decoded inputs (``inputs``)

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
        self._config_hash = None
        self.fs.write_bytes_atomic(CONFIG_PATH, text.encode("utf-8"))

    def recorded_config_hash(self) -> str | None:
        """The ``config_hash`` recorded in config.yaml; None when there is no config.yaml, it
        is not readable YAML or it records none (a found hash is cached: a run's hash never
        changes, `prepare` refuses another config). A recorded value that is not 16 hex digits
        is refused (`StoreError` naming the file and field)."""
        if self._config_hash is None and self.has_config():
            try:
                tree = yaml.safe_load(self.read_config_text())
            except (yaml.YAMLError, UnicodeDecodeError, StoreError, OSError):
                return None
            value = tree.get("config_hash") if isinstance(tree, dict) else None
            if value is not None:  # it names cache files: never a path of the run's choosing
                value = check_config_hash(value, self.fs.display(CONFIG_PATH))
            self._config_hash = value
        return self._config_hash

    # -- any table ---------------------------------------------------------------------------

    def read_table(
        self, rel_path: str, schema: pa.Schema | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Read one Parquet table; with ``schema``, check it and return its columns in order."""
        display = self.fs.display(rel_path)
        try:
            with self.fs.open_input_file(rel_path) as handle:
                parquet_file = pq.ParquetFile(handle, page_checksum_verification=True)
                if schema is not None:
                    check_schema(parquet_file.schema_arrow, schema, display)
                    columns = columns or schema.names
                try:
                    return parquet_file.read(columns=columns)
                except (pa.ArrowException, OSError) as exc:
                    raise StoreError(
                        f"{display}: corrupt: a data page does not read ({first_line(exc)}); "
                        "re-run the stage that writes it"
                    ) from exc
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{display} is not readable Parquet (torn?): {exc}") from exc

    def write_table(self, rel_path: str, table: pa.Table | pd.DataFrame, schema: pa.Schema,
                    versions: dict[str, int] | None = None) -> int:
        """Validate ``table`` against ``schema`` and write it atomically; return bytes written.
        ``versions``: its producers' code versions, kept in its metadata (`table_versions`)."""
        return write_table_atomic(self.fs, rel_path, table, schema, versions)

    def table_versions(self, rel_path: str) -> dict[str, int]:
        """The producers' code versions table ``rel_path`` records (empty: none recorded)."""
        with self.fs.open_input_file(rel_path) as handle:
            return versions_of(pq.read_schema(handle))

    # -- examples ----------------------------------------------------------------------------

    def write_examples(self, table: pa.Table | pd.DataFrame) -> int:
        self._sizes = None
        return self.write_table(EXAMPLES_PATH, table, EXAMPLES_SCHEMA)

    def examples(self) -> pd.DataFrame:
        """``examples.parquet``: index, split, label, original_label, eval/train positions."""
        self._require(EXAMPLES_PATH, "run `datamodels prepare` first")
        return _to_pandas(self.read_table(EXAMPLES_PATH, EXAMPLES_SCHEMA), EXAMPLES_SCHEMA)

    def _split_rows(self, split: str) -> pd.DataFrame:
        """``examples`` rows of ``split`` in their positions' order: ``train`` by train
        position (the columns of masks and scores), ``eval`` by eval position (the columns of
        margins), ``test`` the test split's eval positions (the first ones)."""
        examples = self.examples()
        if split not in ("train", "eval", "test"):
            raise StoreError(f"split {split!r}: choose train, test or eval")
        column = "train_position" if split == "train" else "eval_position"
        rows = examples[examples[column].notna()].sort_values(column)
        return rows[rows["split"] == "test"] if split == "test" else rows

    def inputs(self, split: str = "train") -> np.ndarray:
        """The raw inputs of ``split`` as the dataset gave them (images uint8 [n, H, W, C],
        features float32 [n, d]), in the order of ``_split_rows``: ``inputs("train")[i]`` is
        the example of ``mask[i]`` and score column i. Decoded from the run's beton."""
        if split == "train" and self.fs.isfile(SOURCE_CLASSES_PATH):
            raise StoreError(
                f"{self.uri} is a transfer run: a training point (mask column) is a source "
                "class, not one input; its examples are the 'source' rows of examples.parquet"
            )
        if self._raw is None:
            config_hash = self.recorded_config_hash() or "run"
            self._raw = decode_resident(local_beton(self, config_hash))[0]
        return self._raw[self._split_rows(split)["index"].to_numpy(np.int64)]

    def labels(self, split: str = "train") -> np.ndarray:
        """The labels training used (after any ``flip_fraction``), in ``inputs``' order."""
        return self._split_rows(split)["label"].to_numpy(np.int64)

    def sizes(self) -> tuple[int, int]:
        """(n_train, n_eval): the distinct train positions (in a transfer run the source
        classes, each shared by its examples; else one per train example) and the non-null
        eval positions in ``examples.parquet``."""
        if self._sizes is None:
            self._require(EXAMPLES_PATH, "run `datamodels prepare` first")
            positions = self.read_table(
                EXAMPLES_PATH, EXAMPLES_SCHEMA, columns=["train_position", "eval_position"]
            )
            self._sizes = (
                train_size(positions.column("train_position")),
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

    # -- failures ----------------------------------------------------------------------------

    def failures(self) -> pd.DataFrame:
        """``failures.parquet`` (empty, with its columns, when nothing has failed)."""
        if not self.fs.isfile(FAILURES_PATH):
            return _to_pandas(FAILURES_SCHEMA.empty_table(), FAILURES_SCHEMA)
        return _to_pandas(self.read_table(FAILURES_PATH, FAILURES_SCHEMA), FAILURES_SCHEMA)

    def append_failures(self, rows: pd.DataFrame | pa.Table) -> int:
        """Rewrite ``failures.parquet`` atomically as old rows + ``rows``
        (single writer: the driver)."""
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
        if not isinstance(method, str) or not _METHOD_NAME.fullmatch(method):
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
        versions: dict[str, int] | None = None,
    ) -> int:
        """Write ``scores/<method>.parquet``: ``targets: int[T]``, ``scores: float32[T, n_train]``
        (``versions``: as for `write_table`).

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
        schema = scores_schema(self.n_train)
        return self.write_table(self.scores_path(method), pa.table(columns), schema, versions)

    def scores(self, method: str) -> tuple[np.ndarray, np.ndarray]:
        """(``targets: int64[T]``, ``scores: float32[T, n_train]``) of one method, by target."""
        rel_path = self.scores_path(method)
        self._require(rel_path, f"run the estimate stage for {method!r} first")
        table = self.read_table(rel_path, scores_schema(self.n_train), columns=["target", "scores"])
        targets = table.column("target").to_numpy()
        scores = fixed_size_list_to_numpy(table.column("scores"), np.float32)
        order = np.argsort(targets, kind="stable")
        return targets[order], scores[order]

    def write_self_scores(self, method: str, values: np.ndarray, stderr: np.ndarray | None = None,
                          versions: dict[str, int] | None = None) -> int:
        """Write ``self_scores/<method>.parquet`` (``values: float[n_train]`` by train position;
        stderr inf when unknown; ``versions`` as for `write_table`); returns the row count."""
        values = np.asarray(values, dtype=np.float32)
        stderr = (
            np.full(len(values), np.inf, dtype=np.float32)
            if stderr is None
            else np.asarray(stderr, dtype=np.float32)
        )
        frame = pd.DataFrame(
            {"train_position": np.arange(len(values)), "score": values, "stderr": stderr}
        )
        self.write_table(self.self_scores_path(method), frame, SELF_SCORES_SCHEMA, versions)
        return len(values)

    def self_scores_path(self, method: str) -> str:
        return f"{SELF_SCORES_DIR}/{self.scores_path(method).split('/')[-1]}"

    def self_scores(self) -> dict[str, np.ndarray]:
        """method -> float32[n_train] self scores, for every ``self_scores/*.parquet``."""
        out = {}
        for name in self.fs.listdir(SELF_SCORES_DIR):
            table = self.read_table(f"{SELF_SCORES_DIR}/{name}", SELF_SCORES_SCHEMA)
            order = np.argsort(table.column("train_position").to_numpy())
            out[name[: -len(".parquet")]] = table.column("score").to_numpy()[order]
        return out

    # -- stored-mask plans and counterfactual removals ---------------------------------------

    @staticmethod
    def plan_masks_path(plan: str) -> str:
        """``plan_masks/<plan>.parquet``; ``plan`` must be a plan name (it becomes a path)."""
        return plan_masks_path(check_name(plan, "plan_masks", "plan"))

    def has_plan_masks(self, plan: str) -> bool:
        return self.fs.isfile(self.plan_masks_path(plan))

    def write_plan_masks(self, plan: str, removed: list[np.ndarray]) -> int:
        """Write ``plan_masks/<plan>.parquet`` once: row j is mask j of a stored-mask plan, the
        full training set minus the train positions ``removed[j]``. Refuses to replace an
        existing table (models trained from it would no longer match their masks)."""
        rel_path = self.plan_masks_path(plan)
        if self.fs.isfile(rel_path):
            raise StoreError(
                f"{self.fs.display(rel_path)} exists: a stored-mask plan's masks are written "
                "once; start a new run directory to choose other sets"
            )
        n_train = self.n_train
        for j, positions in enumerate(removed):
            positions = np.asarray(positions, dtype=np.int64)
            if len(positions) and (positions.min() < 0 or positions.max() >= n_train):
                raise StoreError(
                    f"{rel_path}: mask {j} removes position {int(positions.max())}, outside "
                    f"the {n_train} training points"
                )
        rows = [np.asarray(r, dtype=np.int64).tolist() for r in removed]
        table = pa.table({"mask_index": pa.array(np.arange(len(removed), dtype=np.int64)),
                          "removed": pa.array(rows, pa.list_(pa.int64()))})
        return self.write_table(rel_path, table, PLAN_MASKS_SCHEMA)

    def plan_masks(self, plan: str) -> list[np.ndarray] | None:
        """Row j: the int64 train positions that mask j of stored-mask plan ``plan`` leaves
        out; None when ``plan_masks/<plan>.parquet`` is not written yet."""
        rel_path = self.plan_masks_path(plan)
        if not self.fs.isfile(rel_path):
            return None
        table = self.read_table(rel_path, PLAN_MASKS_SCHEMA)
        order = np.argsort(table.column("mask_index").to_numpy())
        removed = table.column("removed").to_pylist()
        return [np.asarray(removed[i], dtype=np.int64) for i in order]

    def removal_sets(self) -> pd.DataFrame:
        """``removals/sets.parquet``: one row per removal set (mask of the removal plan)."""
        self._require(REMOVAL_SETS_PATH, "run `datamodels removal` first")
        return _to_pandas(self.read_table(REMOVAL_SETS_PATH, REMOVAL_SETS_SCHEMA),
                          REMOVAL_SETS_SCHEMA)

    def removal_results(self) -> pd.DataFrame:
        """``removals/results.parquet``: predicted vs retrained margin change per set."""
        self._require(REMOVAL_RESULTS_PATH, "run `datamodels removal` first")
        return _to_pandas(self.read_table(REMOVAL_RESULTS_PATH, REMOVAL_RESULTS_SCHEMA),
                          REMOVAL_RESULTS_SCHEMA)
