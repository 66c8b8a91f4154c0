"""SQL over a run: views, read-only refusal, and the DuckDB example of docs/run-directory.md."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from datamodels.errors import StoreError
from datamodels.store import connect, query, read_statements

from .conftest import N_TRAIN


def test_design_duckdb_example_verbatim(synthetic):
    """`mask[43]` is train_position 42 and `margins[18]` eval_position 17 (1-based lists)."""
    run_dir = synthetic.run.fs.root
    result = duckdb.sql(
        "SELECT mask[43] AS included, avg(margins[18]) "
        f"FROM '{run_dir}/models/*.parquet' GROUP BY 1"
    ).df()
    result = result.set_index("included").iloc[:, 0]
    included = synthetic.masks[:, 42]
    margins = synthetic.margins[:, 17].astype(np.float64)
    assert 0 < included.sum() < len(included)
    assert result[True] == pytest.approx(margins[included].mean(), rel=1e-9, abs=1e-12)
    assert result[False] == pytest.approx(margins[~included].mean(), rel=1e-9, abs=1e-12)


def test_query_views_match_numpy(synthetic):
    run = synthetic.run
    frame = query(
        run,
        "SELECT mask[43] AS included, avg(margins[18]) AS mean_margin, count(*) AS n "
        "FROM models WHERE plan = 'alpha' GROUP BY 1 ORDER BY 1",
    )
    alpha = synthetic.plans == "alpha"
    included = synthetic.masks[alpha, 42]
    margins = synthetic.margins[alpha, 17].astype(np.float64)
    assert frame["n"].tolist() == [int((~included).sum()), int(included.sum())]
    np.testing.assert_allclose(
        frame["mean_margin"], [margins[~included].mean(), margins[included].mean()], rtol=1e-9
    )
    joined = query(
        run,
        "SELECT count(*) AS n FROM examples e WHERE e.split = 'train' AND e.train_position < 10",
    )
    assert joined["n"].item() == 10


def test_views_exist_only_for_tables_that_exist(synthetic):
    run = synthetic.run
    names = set(
        connect(run)
        .sql("SELECT view_name FROM duckdb_views() WHERE NOT internal")
        .df()["view_name"]
    )
    assert names == {"models", "examples"}
    run.write_scores("loo", np.arange(3), np.ones((3, N_TRAIN)))
    run.append_failures(
        pd.DataFrame({"model_id": [1], "plan": ["alpha"], "attempt": [1], "error_type": ["E"]})
    )
    connection = connect(run)
    names = set(
        connection.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").df()["view_name"]
    )
    assert names == {"models", "examples", "failures", "scores_loo"}
    total = query(run, "SELECT sum(list_sum(scores)) AS s FROM scores_loo", connection)
    assert total["s"].item() == pytest.approx(3 * N_TRAIN)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
        "DESCRIBE models",
        "SHOW TABLES",
        "SUMMARIZE SELECT 1",
        "EXPLAIN SELECT * FROM models",
        "EXPLAIN ANALYZE SELECT count(*) FROM models",
        "PRAGMA show_tables",
    ],
)
def test_read_statements_allowed(synthetic, sql):
    read_statements(sql)
    query(synthetic.run, sql)


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO models SELECT * FROM models",
        "DROP VIEW models",
        "COPY (SELECT 1) TO 'out.csv'",
        "SET threads = 1",
        "PRAGMA threads = 1",
        "ATTACH 'other.db'",
        "INSTALL httpfs",
        "SELECT 1; DELETE FROM models",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    ],
)
def test_write_statements_refused(synthetic, sql):
    with pytest.raises(StoreError, match="only read queries are allowed"):
        query(synthetic.run, sql)


def test_connect_refuses_a_torn_shard_by_name(synthetic):
    rel_path = synthetic.shard_paths[0]
    with open(synthetic.run.fs.join(rel_path), "r+b") as handle:
        handle.truncate(50)
    with pytest.raises(StoreError, match=rel_path.split("/")[1]):
        connect(synthetic.run)
