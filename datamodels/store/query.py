"""SQL over a run directory: DuckDB views named after its tables, and read-only queries.

`connect` gives an in-memory DuckDB connection with one view per table that exists:
``models``, ``examples``, ``failures``, ``weights``, ``targets``, ``evaluation`` and
``scores_<method>``. Local runs get views over the Parquet files themselves (DuckDB's own
reader); remote runs (``s3://`` ...) get the same names over pyarrow datasets registered with
DuckDB. `query` runs only read statements (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE /
EXPLAIN / show-like PRAGMAs) and returns a DataFrame. DuckDB lists are 1-based:
``mask[i + 1]`` is train_position i.
"""

from __future__ import annotations

import re

import duckdb
import pandas as pd
import pyarrow.dataset as ds

from datamodels.errors import StoreError
from datamodels.store.run import Run
from datamodels.store.schemas import (
    EVALUATION_PATH,
    EXAMPLES_PATH,
    FAILURES_PATH,
    MODELS_DIR,
    SCORES_DIR,
    TARGETS_PATH,
    WEIGHTS_PATH,
)
from datamodels.store.verify import UNUSABLE_KINDS, format_problems

_SINGLE_TABLES = {
    "examples": EXAMPLES_PATH,
    "failures": FAILURES_PATH,
    "weights": WEIGHTS_PATH,
    "targets": TARGETS_PATH,
    "evaluation": EVALUATION_PATH,
}
_READ_TYPES = {duckdb.StatementType.SELECT}
_READ_PRAGMAS = re.compile(
    r"\s*pragma\s+(show|show_tables|show_tables_expanded|show_databases|table_info|"
    r"database_list|database_size|version|platform|functions|collations|storage_info|"
    r"metadata_info|user_agent)\b",
    re.IGNORECASE,
)
_EXPLAIN = re.compile(r"\s*explain\s+(?P<analyze>analy[sz]e\s+)?(?P<inner>.*)", re.I | re.S)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _table_files(run: Run, check: bool) -> dict[str, list[str]]:
    """View name -> relative Parquet paths, for the tables that exist."""
    if check:
        _, problems = run.valid_shards()
        unusable = [problem for problem in problems if problem.kind in UNUSABLE_KINDS]
        if unusable:
            raise StoreError(
                f"{run.fs.display(MODELS_DIR)} has shards SQL cannot read:\n"
                + format_problems(unusable)
            )
    files: dict[str, list[str]] = {}
    shards = [f"{MODELS_DIR}/{name}" for name in run.shard_files()]
    if shards:
        files["models"] = shards
    for view, rel_path in _SINGLE_TABLES.items():
        if run.fs.isfile(rel_path):
            files[view] = [rel_path]
    for method in run.score_methods():
        files[f"scores_{method}"] = [f"{SCORES_DIR}/{method}.parquet"]
    for name in run.fs.listdir("self_scores"):
        files[f"self_scores_{name[: -len('.parquet')]}"] = [f"self_scores/{name}"]
    return files


def connect(run: Run | str, check: bool = True) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with a view per existing table of ``run``.

    With ``check`` (default) a torn or wrong-schema shard raises `StoreError` naming it rather
    than failing inside a query. The ``models`` view is a snapshot of the shard list.
    """
    run = run if isinstance(run, Run) else Run(run)
    connection = duckdb.connect(":memory:")
    for view, rel_paths in _table_files(run, check).items():
        if run.fs.is_local:
            paths = ", ".join(_literal(run.fs.join(rel_path)) for rel_path in rel_paths)
            connection.execute(
                f"CREATE VIEW {_identifier(view)} AS SELECT * FROM read_parquet([{paths}])"
            )
        else:
            dataset = ds.dataset(
                [run.fs.join(rel_path) for rel_path in rel_paths],
                format="parquet",
                filesystem=run.fs.filesystem,
            )
            connection.register(view, dataset)
    return connection


def _is_read_only(statement: duckdb.Statement) -> bool:
    if statement.type in _READ_TYPES:
        return True
    if statement.type == duckdb.StatementType.PRAGMA:
        return bool(_READ_PRAGMAS.match(statement.query))
    if statement.type == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE executes its statement, so the inner statement must be a read too.
        match = _EXPLAIN.match(statement.query)
        if match is None:
            return False
        inner = duckdb.extract_statements(match.group("inner"))
        return len(inner) == 1 and _is_read_only(inner[0])
    return False


def read_statements(sql: str) -> list[duckdb.Statement]:
    """The statements of ``sql``; `StoreError` unless every one of them only reads."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise StoreError(f"cannot parse SQL: {exc}") from exc
    if not statements:
        raise StoreError("empty SQL: give a SELECT query")
    for statement in statements:
        if not _is_read_only(statement):
            raise StoreError(
                f"only read queries are allowed (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN); "
                f"got a {statement.type.name} statement: {statement.query.strip()[:80]!r}"
            )
    return statements


def query(
    run: Run | str, sql: str, connection: duckdb.DuckDBPyConnection | None = None
) -> pd.DataFrame:
    """Run read-only ``sql`` against ``run``'s views; the last statement's result as a DataFrame."""
    statements = read_statements(sql)
    owned = connection is None
    connection = connect(run) if connection is None else connection
    try:
        for statement in statements[:-1]:
            connection.execute(statement)
        return connection.execute(statements[-1]).df()
    except duckdb.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    finally:
        if owned:
            connection.close()
