"""The write path: conform to the schema, validate, atomic write; shard names; RunFS."""

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodels.errors import StoreError
from datamodels.store import (
    WEIGHTS_SCHEMA,
    RunFS,
    fixed_size_list_to_numpy,
    models_table,
    models_written_schema,
    shard_name,
    write_model_shard,
    write_table_atomic,
)

from .conftest import corrupt_page


def weights_frame(rows: int = 4) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "target": np.arange(rows),
            "train_position": np.arange(rows) * 2,
            "weight": np.linspace(0, 1, rows),  # float64: cast to float32 on write
        }
    )


def test_shard_name_is_deterministic_and_order_free():
    name = shard_name([12, 3, 7])
    assert name == shard_name(np.array([7, 12, 3]))
    assert name.startswith("part-000000003-000000012-") and name.endswith(".parquet")
    assert len(name.split("-")[3]) == len("0123456789.parquet")
    assert shard_name([3, 7, 12]) != shard_name([3, 8, 12])
    with pytest.raises(StoreError):
        shard_name([])
    with pytest.raises(StoreError, match="duplicates"):
        shard_name([1, 1])


def test_models_table_builds_contract_columns():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 6)) < 0.5
    margins = rng.normal(size=(3, 4))
    table = models_table(
        [5, 6, 7], "alpha", [0.1, 0.2, 0.3], 11, masks, margins, 0.5, 1.0, [1.0, 2.0, 3.0], 2, None
    )
    assert table.schema.equals(models_written_schema(6, 4), check_metadata=True)
    np.testing.assert_array_equal(fixed_size_list_to_numpy(table["mask"], np.bool_), masks)
    np.testing.assert_array_equal(
        fixed_size_list_to_numpy(table["margins"], np.float32), margins.astype(np.float32)
    )
    assert table["plan"].to_pylist() == ["alpha"] * 3
    assert table["seed"].to_pylist() == [11] * 3
    assert table["worker"].null_count == 3
    with pytest.raises(StoreError, match="masks has shape"):
        models_table([1, 2], "a", 0.5, 0, masks, margins, 0, 0, 0, 1, "w")
    with pytest.raises(StoreError, match="alphas"):
        models_table([5, 6, 7], "a", [0.5, 0.5], 0, masks, margins, 0, 0, 0, 1, "w")


def test_fixed_size_list_to_numpy_respects_slices_and_chunks():
    matrix = np.arange(24, dtype=np.float32).reshape(6, 4)
    array = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), 4)
    column = pa.chunked_array([array.slice(1, 2), array.slice(4, 2)])
    np.testing.assert_array_equal(
        fixed_size_list_to_numpy(column, np.float32), matrix[[1, 2, 4, 5]]
    )


def test_write_table_atomic_round_trip_and_no_temp_files(tmp_path):
    runfs = RunFS(tmp_path)
    written = write_table_atomic(
        runfs, "datamodels/weights.parquet", weights_frame(), WEIGHTS_SCHEMA
    )
    path = tmp_path / "datamodels" / "weights.parquet"
    assert written == path.stat().st_size
    assert os.listdir(tmp_path / "datamodels") == ["weights.parquet"]
    table = pq.read_table(path)
    assert table.schema.field("weight").type == pa.float32()
    assert table.schema.metadata[b"schema_version"] == b"3"
    np.testing.assert_allclose(table["weight"].to_numpy(), np.linspace(0, 1, 4), rtol=1e-6)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.rename(columns={"weight": "wieght"}), "unexpected column"),
        (lambda df: df.drop(columns=["weight"]), "required column 'weight' is missing"),
        (lambda df: df.assign(target=["a", "b", "c", "d"]), "'target' has type"),
        (lambda df: df.assign(weight=[1.0, None, 2.0, 3.0]), "null"),
    ],
)
def test_write_table_atomic_refuses_wrong_tables(tmp_path, change, message):
    runfs = RunFS(tmp_path)
    with pytest.raises(StoreError, match=message):
        write_table_atomic(runfs, "w.parquet", change(weights_frame()), WEIGHTS_SCHEMA)
    assert os.listdir(tmp_path) == []


def test_failed_rename_leaves_no_partial_file(tmp_path, monkeypatch):
    runfs = RunFS(tmp_path)

    def broken_replace(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk vanished"):
        write_table_atomic(runfs, "models/x.parquet", weights_frame(), WEIGHTS_SCHEMA)
    assert os.listdir(tmp_path / "models") == []


def test_temp_name_is_hidden_and_not_parquet(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spying_replace(src, dst):
        seen.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    RunFS(tmp_path).write_bytes_atomic("a/b.parquet", b"data")
    (temp,) = seen
    assert temp.startswith(".b.parquet.tmp-") and not temp.endswith(".parquet")
    assert os.listdir(tmp_path / "a") == ["b.parquet"]


def test_retried_shard_rewrites_the_same_file(tmp_path):
    runfs = RunFS(tmp_path)
    rng = np.random.default_rng(1)
    masks, margins = rng.random((2, 5)) < 0.5, rng.normal(size=(2, 3))
    first = models_table([4, 9], "alpha", 0.5, 0, masks, margins, 0, 0, 0, 1, "a")
    retry = models_table([9, 4], "alpha", 0.5, 0, masks[::-1], margins[::-1], 0, 0, 0, 2, "b")
    path_first, _ = write_model_shard(runfs, first)
    path_retry, _ = write_model_shard(runfs, retry)
    assert path_first == path_retry
    assert runfs.listdir("models") == [path_first.split("/")[1]]
    assert pq.read_table(tmp_path / path_first)["attempt"].to_pylist() == [2, 2]


def test_runfs_paths_and_uris(tmp_path):
    runfs = RunFS(f"file://{tmp_path}")
    assert runfs.is_local and runfs.root == str(tmp_path)
    assert runfs.join("models", "x.parquet") == f"{tmp_path}/models/x.parquet"
    assert runfs.listdir("models") == []
    runfs.write_bytes_atomic("models/b.parquet", b"1")
    runfs.write_bytes_atomic("models/a.parquet", b"2")
    runfs.write_bytes_atomic("models/c.txt", b"3")
    assert runfs.listdir("models") == ["a.parquet", "b.parquet"]
    assert runfs.exists("models") and not runfs.isfile("models") and runfs.isfile("models/c.txt")
    runfs.move("models/a.parquet", "models/_invalid/a.parquet")
    assert runfs.read_bytes("models/_invalid/a.parquet") == b"2"
    with pytest.raises(StoreError, match="does not exist"):
        runfs.read_bytes("models/a.parquet")
    assert RunFS(os.path.relpath(tmp_path)).root == str(tmp_path)


def test_tables_are_written_with_page_checksums(tmp_path):
    """Every table written through write_table_atomic carries page CRCs: a changed page fails
    to read when checksums are verified (and reads as silent garbage without them)."""
    runfs = RunFS(tmp_path)
    frame = weights_frame(200).assign(weight=np.random.default_rng(0).normal(size=200))
    write_table_atomic(runfs, "datamodels/weights.parquet", frame, WEIGHTS_SCHEMA)
    path = str(tmp_path / "datamodels" / "weights.parquet")
    corrupt_page(path, "weight")
    garbage = pq.read_table(path)["weight"].to_numpy()
    assert not np.allclose(garbage, frame["weight"].to_numpy(np.float32))
    with pytest.raises(OSError, match="(?i)checksum"):
        pq.read_table(path, page_checksum_verification=True)


def test_model_shard_records_config_hash_in_metadata_only(tmp_path):
    runfs = RunFS(tmp_path)
    masks, margins = np.ones((2, 5), bool), np.zeros((2, 3))
    table = models_table([1, 2], "alpha", 0.5, 0, masks, margins, 0, 0, 0, 1, "a")
    path, _ = write_model_shard(runfs, table, config_hash="0123456789abcdef")
    parquet_file = pq.ParquetFile(tmp_path / path)
    assert parquet_file.metadata.metadata[b"config_hash"] == b"0123456789abcdef"
    schema = parquet_file.schema_arrow
    assert schema.metadata[b"schema_version"] == b"3"
    assert schema.remove_metadata().equals(models_written_schema(5, 3).remove_metadata())
    unhashed, _ = write_model_shard(
        runfs, models_table([3], "a", 0.5, 0, masks[:1], margins[:1], 0, 0, 0, 1, "a")
    )
    assert b"config_hash" not in pq.ParquetFile(tmp_path / unhashed).metadata.metadata
    with pytest.raises(StoreError, match="config_hash"):
        write_model_shard(runfs, table, config_hash="")
