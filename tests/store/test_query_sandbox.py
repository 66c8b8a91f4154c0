"""`query` / `connect` read the run's tables and nothing else, and never count a model twice.

No test here needs the network: every URL points at a closed port on 127.0.0.1 and must be
refused before DuckDB tries to fetch an extension or open a socket. ``HOME`` points at an
empty directory so an extension download attempt would show up as ``HOME/.duckdb``.
"""

from pathlib import Path

import duckdb
import pytest

from datamodels.errors import StoreError
from datamodels.store import Run, connect, query

from .conftest import N_EVAL, N_TRAIN, build_run

CLOSED_PORT_URL = "http://127.0.0.1:1"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty HOME: DuckDB would put auto-installed extensions under HOME/.duckdb. (The
    record of verified files, store/guards.py, goes to XDG_CACHE_HOME, elsewhere.)"""
    directory = tmp_path / "home"
    directory.mkdir()
    monkeypatch.setenv("HOME", str(directory))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return directory


def refused(run, sql: str, match: str) -> str:
    """The one-line `StoreError` message ``query`` raises for ``sql``."""
    with pytest.raises(StoreError, match=match) as caught:
        query(run, sql)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "sql",
    [
        f"SELECT * FROM read_csv('{CLOSED_PORT_URL}/x.csv')",
        f"SELECT * FROM read_parquet('{CLOSED_PORT_URL}/x.parquet')",
        f"SELECT * FROM '{CLOSED_PORT_URL}/x.parquet'",
        "SELECT * FROM read_csv('https://127.0.0.1:1/x.csv')",
        "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
        f"SELECT * FROM read_json('{CLOSED_PORT_URL}/x.json')",
    ],
)
def test_network_reads_refused_without_installing_extensions(synthetic, home, sql):
    """A URL would auto-install and auto-load httpfs (writing HOME/.duckdb, downloading)."""
    refused(synthetic.run, sql, "query failed: .*disabled by configuration")
    assert list(home.iterdir()) == []


@pytest.mark.parametrize(
    "read",
    [
        "read_csv('{outside}/secret.csv')",
        "read_text('{outside}/secret.csv')",
        "read_blob('{outside}/secret.csv')",
        "read_parquet('{outside}/other-run/models/*.parquet')",
        "parquet_metadata('{outside}/other-run/examples.parquet')",
        "read_parquet('{run}-old/examples.parquet')",  # a sibling whose name extends the run's
        "read_text('{run}/../secret.csv')",
        "read_csv('file://{outside}/secret.csv')",
        "read_text('/etc/passwd')",
    ],
)
def test_local_files_outside_the_run_refused(synthetic, tmp_path, read):
    run_dir = synthetic.run.fs.root
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    build_run(tmp_path / "other-run", seed=1)
    build_run(Path(run_dir + "-old"), seed=2)
    sql = "SELECT * FROM " + read.format(outside=tmp_path, run=run_dir)
    refused(synthetic.run, sql, "query failed: .*disabled by configuration")


def test_files_inside_the_run_still_readable(synthetic):
    run_dir = synthetic.run.fs.root
    frame = query(
        synthetic.run, f"SELECT count(*) AS n FROM read_parquet('{run_dir}/models/*.parquet')"
    )
    assert frame["n"].item() == len(synthetic.model_ids)
    config = query(synthetic.run, f"SELECT content FROM read_text('{run_dir}/config.yaml')")
    assert config["content"].item().startswith("seed: 0")


@pytest.mark.parametrize("pattern", ["/*", "{outside}/*", "{outside}/**/*.parquet"])
def test_glob_outside_the_run_refused(synthetic, tmp_path, pattern):
    build_run(tmp_path / "other-run", seed=1)
    sql = f"SELECT * FROM glob('{pattern.format(outside=tmp_path)}')"
    refused(synthetic.run, sql, "query failed: .*disabled by configuration")


def test_glob_inside_the_run_allowed(synthetic):
    run_dir = synthetic.run.fs.root
    files = query(synthetic.run, f"SELECT file FROM glob('{run_dir}/models/*.parquet')")
    assert sorted(files["file"]) == sorted(f"{run_dir}/{path}" for path in synthetic.shard_paths)


@pytest.mark.parametrize(
    "sql",
    [
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET allowed_directories = ['/']",
        "SET autoinstall_known_extensions = true",
        "SET GLOBAL autoload_known_extensions = true",
        "PRAGMA enable_external_access",
        "SET lock_configuration = false",
        "SELECT 1; SET enable_external_access = true",
    ],
)
def test_settings_cannot_be_changed_back(synthetic, sql):
    """`query` refuses the statement; the connection itself is locked as well."""
    refused(synthetic.run, sql, "only read queries are allowed")
    connection = connect(synthetic.run)
    with pytest.raises(duckdb.Error):
        for statement in duckdb.extract_statements(sql):
            connection.execute(statement)
    setting = connection.execute("SELECT current_setting('enable_external_access')").fetchall()
    assert setting == [(False,)]


def test_query_table_function_cannot_run_settings(synthetic):
    refused(
        synthetic.run,
        "SELECT * FROM query('SET enable_external_access = true')",
        "query failed: .*single SELECT",
    )


def test_connection_settings(synthetic):
    connection = connect(synthetic.run)
    settings = dict(
        connection.sql(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ("
            "'autoinstall_known_extensions', 'autoload_known_extensions', "
            "'enable_external_access', 'lock_configuration', 'allowed_directories')"
        ).fetchall()
    )
    assert settings["autoinstall_known_extensions"] == "false"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert synthetic.run.fs.root + "/" in settings["allowed_directories"]


@pytest.mark.parametrize(
    "sql",
    ["INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL httpfs FROM core", "LOAD '/tmp/x.ext'"],
)
def test_install_and_load_refused(synthetic, home, sql):
    refused(synthetic.run, sql, "only read queries are allowed")
    connection = connect(synthetic.run)
    with pytest.raises(duckdb.Error, match="disabled"):
        connection.execute(sql)
    assert list(home.iterdir()) == []


@pytest.mark.parametrize("remote", [False, True])
def test_duplicate_model_ids_refused_by_the_models_view(tmp_path, remote):
    """Two shards holding model_ids 5..9 would count those models twice: refused, named."""
    synthetic = build_run(tmp_path / "run", shards=((0, 10, "alpha"), (5, 15, "alpha")))
    first, second = (path.split("/")[1] for path in synthetic.shard_paths)
    run = Run(synthetic.run.fs.root)
    run.fs.is_local = not remote  # remote: views over pyarrow datasets
    for sql in (
        "SELECT count(*) FROM models",
        "SELECT mask[43], avg(margins[18]) FROM models GROUP BY 1",
        "SELECT model_id FROM models WHERE model_id = 7",
    ):
        message = refused(run, sql, "models view refused")
        assert "5, 6, 7, 8, 9" in message
        assert first in message and second in message
    # Other views, and the models view's columns, are still there.
    assert query(run, "SELECT count(*) AS n FROM examples")["n"].item() == N_TRAIN + N_EVAL
    assert "mask" in set(query(run, "DESCRIBE models")["column_name"])


@pytest.mark.parametrize("remote", [False, True])
def test_no_hidden_table_reads_around_the_duplicate_guard(tmp_path, remote):
    """The refused ``models`` view is the only name its rows have: on an object store the
    dataset under it used to be registered as ``__models_with_duplicates``."""
    synthetic = build_run(tmp_path / "run", shards=((0, 10, "alpha"), (5, 15, "alpha")))
    run = Run(synthetic.run.fs.root)
    run.fs.is_local = not remote
    for sql in (
        "SELECT count(*) FROM __models_with_duplicates",
        'SELECT count(*) FROM "__models_with_duplicates"',
    ):
        refused(run, sql, "query failed: .*__models_with_duplicates")
    names = query(
        run,
        "SELECT table_name FROM duckdb_tables() UNION ALL "
        "SELECT view_name FROM duckdb_views() WHERE NOT internal",
    )["table_name"]
    assert set(names) == {"models", "examples"}


@pytest.mark.parametrize(
    "where",
    ["folder", "file", "shard"],
)
def test_links_to_outside_the_run_are_refused(synthetic, tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a,b\n1,2\n")
    run_dir = Path(synthetic.run.fs.root)
    if where == "folder":
        (run_dir / "elsewhere").symlink_to(outside)
        read = f"read_csv('{run_dir}/elsewhere/secret.csv')"
    elif where == "file":
        (run_dir / "_parts").mkdir()
        (run_dir / "_parts" / "secret.csv").symlink_to(outside / "secret.csv")
        read = f"read_csv('{run_dir}/_parts/secret.csv')"
    else:
        build_run(outside / "other", seed=4)
        shard = next((outside / "other" / "models").glob("*.parquet"))
        (run_dir / "models" / "part-999999990-999999999-0000000000.parquet").symlink_to(shard)
        read = "models"
    message = refused(synthetic.run, f"SELECT * FROM {read}", "query refused: .* is a link to")
    assert str(outside) in message and "outside the run" in message


def test_links_inside_the_run_are_fine(synthetic):
    run_dir = Path(synthetic.run.fs.root)
    (run_dir / "alias.parquet").symlink_to(run_dir / "examples.parquet")
    frame = query(synthetic.run, f"SELECT count(*) AS n FROM '{run_dir}/alias.parquet'")
    assert frame["n"].item() == N_TRAIN + N_EVAL
