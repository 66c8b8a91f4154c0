"""SQL over a run directory: DuckDB views named after its tables, and read-only queries.

`connect` gives an in-memory DuckDB connection with one view per table that exists:
``models``, ``examples``, ``failures``, ``weights``, ``targets``, ``evaluation``,
``removal_sets``, ``removal_results``, ``alpha_effect``, ``lds_curve``, ``sparse_path``,
``sparse_weights``, ``sparse_features``, ``sparse_summary``, ``source_classes`` and
``scores_<method>``. Local runs get views over the Parquet files themselves (DuckDB's own
reader); remote runs (``s3://`` ...) get the same names over pyarrow datasets registered with
DuckDB. `query` runs only read statements (SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE /
EXPLAIN / show-like PRAGMAs) and returns a DataFrame. DuckDB lists are 1-based:
``mask[i + 1]`` is train_position i.

The connection reads nothing but the run: extension auto-install and auto-load are off,
external access is off with only the run directory allowed (``read_csv('/etc/passwd')``,
``glob('/*')``, ``http://`` / ``s3://`` reads, INSTALL / LOAD / ATTACH / COPY all fail), and the
configuration is locked so no SQL can set it back. A local run holding a symbolic link to
anything outside it is refused (DuckDB judges a path by its text, so a link would let SQL
read where it points). When two shards hold the same model_id the ``models`` view refuses
to return rows (it would count those models twice) and names them; on an object store the
view is the only name the rows have (no registered dataset to select around it).

DuckDB checks no Parquet page checksum, so before a file becomes a view its pages are read
once against their CRCs (a changed byte is refused, naming the file, instead of returned as a
plausible number); a file verified before and unchanged since (the same size, modification
and change time and inode on a local disk, the same ETag on S3) is not read again
(`datamodels.store.guards`, a per-user cache). A run whose
compaction stopped half way, or with a shard `verify` names as unusable, is refused.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow.dataset as ds

from datamodels.errors import MissingDependencyError, StoreError
from datamodels.store.guards import check_pages
from datamodels.store.problems import UNUSABLE_KINDS, Problem, format_problems
from datamodels.store.run import Run
from datamodels.store.schemas import (
    ALPHA_EFFECT_PATH,
    EVALUATION_PATH,
    EXAMPLES_PATH,
    FAILURES_PATH,
    LDS_CURVE_PATH,
    MODELS_DIR,
    REMOVAL_RESULTS_PATH,
    REMOVAL_SETS_PATH,
    SCORES_DIR,
    SOURCE_CLASSES_PATH,
    SPARSE_FEATURES_PATH,
    SPARSE_PATH_PATH,
    SPARSE_SUMMARY_PATH,
    SPARSE_WEIGHTS_PATH,
    TARGETS_PATH,
    WEIGHTS_PATH,
)

if TYPE_CHECKING:
    import duckdb


def _duckdb():
    """The duckdb module, or one line saying how to install it (the pipeline never needs it)."""
    try:
        import duckdb
    except ImportError:
        raise MissingDependencyError(
            "DuckDB", "SQL over a run (query, serve)", "pip install 'duckdb>=1.4'"
        ) from None
    return duckdb


_SINGLE_TABLES = {
    "examples": EXAMPLES_PATH,
    "failures": FAILURES_PATH,
    "weights": WEIGHTS_PATH,
    "targets": TARGETS_PATH,
    "evaluation": EVALUATION_PATH,
    "removal_sets": REMOVAL_SETS_PATH,
    "removal_results": REMOVAL_RESULTS_PATH,
    "alpha_effect": ALPHA_EFFECT_PATH,
    "lds_curve": LDS_CURVE_PATH,
    "sparse_path": SPARSE_PATH_PATH,
    "sparse_weights": SPARSE_WEIGHTS_PATH,
    "sparse_features": SPARSE_FEATURES_PATH,
    "sparse_summary": SPARSE_SUMMARY_PATH,
    "source_classes": SOURCE_CLASSES_PATH,
}
_READ_PRAGMAS = re.compile(
    r"\s*pragma\s+(show|show_tables|show_tables_expanded|show_databases|table_info|"
    r"database_list|database_size|version|platform|functions|collations|storage_info|"
    r"metadata_info|user_agent)\b",
    re.IGNORECASE,
)
_EXPLAIN = re.compile(r"\s*explain\s+(?P<analyze>analy[sz]e\s+)?(?P<inner>.*)", re.I | re.S)
# Set before any view exists: no extension is fetched or loaded behind a query's back.
_EXTENSION_SETTINGS = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}
_DUPLICATES_SHOWN = 5


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _duplicates_message(duplicates: list[Problem]) -> str:
    """One line naming the model ids held twice and the shards holding them."""
    pairs = "; ".join(
        f"{problem.file}: {problem.message}" for problem in duplicates[:_DUPLICATES_SHOWN]
    )
    if len(duplicates) > _DUPLICATES_SHOWN:
        pairs += f"; and {len(duplicates) - _DUPLICATES_SHOWN} more"
    return (
        f"models view refused: the same model_id is in more than one shard, so its rows would "
        f"be counted twice: {pairs}; run `datamodels verify` and quarantine the extra copies"
    )


def _table_files(run: Run, check: bool) -> tuple[dict[str, list[str]], list[Problem]]:
    """(view name -> relative Parquet paths for the tables that exist, duplicate-id problems).

    With ``check``, every shard and table has its pages verified against their checksums
    before DuckDB (which reads none) is given it: once per change of a file, remembered in
    the per-user cache of `datamodels.store.guards`."""
    duplicates: list[Problem] = []
    if check:
        _, problems = run.valid_shards()
        unusable = [problem for problem in problems if problem.kind in UNUSABLE_KINDS]
        if unusable:
            raise StoreError(
                f"{run.fs.display(MODELS_DIR)} has shards SQL cannot read:\n"
                + format_problems(unusable)
            )
        duplicates = [problem for problem in problems if problem.kind == "duplicate"]
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
    if check:  # DuckDB reads no page checksum: every table is verified first (once per change)
        tables = [paths[0] for view, paths in files.items() if view != "models"]
        bad = check_pages(run, tables)
        if bad:
            raise StoreError(
                "query refused: a table does not read as written:\n" + format_problems(bad)
            )
    return files, duplicates


def _links_outside(root: str) -> list[tuple[str, str]]:
    """(link, target) for every symbolic link under ``root`` whose target lies outside it:
    DuckDB checks a path's text against ``allowed_directories``, not where a link leads."""
    root = os.path.realpath(root)
    found = []
    for directory, folders, names in os.walk(root, followlinks=False):
        for name in folders + names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if target != root and not target.startswith(root + os.sep):
                    found.append((path, target))
    return found


def connect(run: Run | str, check: bool = True) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB connection with a view per existing table of ``run``, reading nothing else.

    With ``check`` (default) a torn or wrong-schema shard raises `StoreError` naming it rather
    than failing inside a query, and when two shards share a model_id every query that reads a
    row of the ``models`` view fails naming the ids and shards (``check=False`` skips both
    checks). The ``models`` view is a snapshot of the shard list. The connection cannot read
    files outside the run directory, reach the network, install or load extensions, or change
    its configuration (``SET`` fails: it is locked).
    """
    run = run if isinstance(run, Run) else Run(run)
    if run.fs.is_local and (links := _links_outside(run.fs.root)):
        link, target = links[0]
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise StoreError(
            f"query refused: {link} is a link to {target}, outside the run{more}; SQL reads "
            "only the run's own files: remove the link or copy what it points at into the run"
        )
    duckdb = _duckdb()
    files, duplicates = _table_files(run, check)
    connection = duckdb.connect(":memory:", config=dict(_EXTENSION_SETTINGS))
    try:
        # Views read their files at query time, under these settings: only the run directory
        # (trailing "/", so not a sibling such as "<run>-old"); remote runs no file at all.
        allowed = [run.fs.root.rstrip("/") + "/"] if run.fs.is_local else []
        connection.execute("SET allowed_directories = $1", [allowed])
        connection.execute("SET enable_external_access = false")
        connection.execute("SET python_enable_replacements = false")
        for view, rel_paths in files.items():
            refuse = view == "models" and bool(duplicates)
            # error() runs on every row that reaches a result, so a models view that would
            # count a model twice never returns a row; DESCRIBE models still shows its columns.
            where = f"error({_literal(_duplicates_message(duplicates))})" if refuse else None
            if run.fs.is_local:
                paths = ", ".join(_literal(run.fs.join(rel_path)) for rel_path in rel_paths)
                # shards with and without the ``trainer`` column (schema_version 3 and 2)
                union = ", union_by_name = true" if view == "models" else ""
                source = f"read_parquet([{paths}]{union})"
                condition = f" WHERE {where}" if where else ""
                connection.execute(
                    f"CREATE VIEW {_identifier(view)} AS SELECT * FROM {source}{condition}"
                )
                continue
            # Remote files are read by pyarrow; DuckDB sees a view over the dataset and no
            # registered name of its own, so no SQL can read the rows around the view's check.
            dataset = ds.dataset(
                [run.fs.join(rel_path) for rel_path in rel_paths],
                format="parquet",
                filesystem=run.fs.filesystem,
            )
            relation = connection.from_arrow(dataset)
            (relation.filter(where) if where else relation).create_view(view)
        connection.execute("SET lock_configuration = true")
    except BaseException:
        connection.close()
        raise
    return connection


def _is_read_only(statement: duckdb.Statement) -> bool:
    duckdb = _duckdb()
    if statement.type == duckdb.StatementType.SELECT:
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
    duckdb = _duckdb()
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


def _one_line(exc: duckdb.Error) -> str:
    """DuckDB's message without its ``LINE 1: ... ^^^`` excerpt, on one line."""
    lines = []
    for line in str(exc).splitlines():
        if line.startswith("LINE "):
            break
        if line.strip():
            lines.append(line.strip())
    message = " ".join(lines) or type(exc).__name__
    if isinstance(exc, _duckdb().PermissionException):
        message += " (queries may read only this run's files)"
    return message


def query(
    run: Run | str, sql: str, connection: duckdb.DuckDBPyConnection | None = None
) -> pd.DataFrame:
    """Run read-only ``sql`` against ``run``'s views; the last statement's result as a DataFrame."""
    statements = read_statements(sql)
    duckdb = _duckdb()
    owned = connection is None
    try:
        connection = connect(run) if connection is None else connection
    except duckdb.Error as exc:  # e.g. a view over a file outside the run (a symlinked folder)
        raise StoreError(f"query failed: {_one_line(exc)}") from exc
    try:
        for statement in statements[:-1]:
            connection.execute(statement)
        return connection.execute(statements[-1]).df()
    except duckdb.Error as exc:
        raise StoreError(f"query failed: {_one_line(exc)}") from exc
    finally:
        if owned:
            connection.close()
