"""`Run`: readers return what was written, in model_id order, filtered by plan."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodels.errors import StoreError
from datamodels.store import FAILURES_SCHEMA, Run, models_written_schema, query

from .conftest import (
    N_EVAL,
    N_TRAIN,
    build_planned_run,
    build_run,
    corrupt_page,
    examples_frame,
    shard_table,
)


def test_sizes_and_examples(synthetic):
    run = synthetic.run
    assert (run.n_train, run.n_eval) == (N_TRAIN, N_EVAL)
    examples = run.examples()
    assert list(examples.columns) == [
        "index",
        "split",
        "label",
        "original_label",
        "eval_position",
        "train_position",
    ]
    assert (examples["split"] == "train").sum() == N_TRAIN
    assert examples["train_position"].dtype == "Int64"  # nullable ints stay ints
    assert examples["train_position"].dropna().tolist() == list(range(N_TRAIN))
    assert run.read_config_text() == "seed: 0\nhash: abc\n"
    assert run.local_path("data/examples.beton") == f"{run.fs.root}/data/examples.beton"


def test_masks_and_margins_round_trip_in_model_id_order(synthetic):
    run = synthetic.run
    np.testing.assert_array_equal(run.model_ids(), synthetic.model_ids)
    np.testing.assert_array_equal(run.masks(), synthetic.masks)
    np.testing.assert_array_equal(run.margins(), synthetic.margins)
    masks, margins = run.masks_and_margins()
    assert masks.dtype == np.bool_ and masks.shape == (40, N_TRAIN)
    assert margins.dtype == np.float32 and margins.shape == (40, N_EVAL)
    np.testing.assert_array_equal(masks, synthetic.masks)
    np.testing.assert_array_equal(margins, synthetic.margins)


@pytest.mark.parametrize("plan", ["alpha", "loo", ["loo"], ["alpha", "loo"], "nothing"])
def test_readers_filter_by_plan(synthetic, plan):
    run = synthetic.run
    wanted = np.isin(synthetic.plans, [plan] if isinstance(plan, str) else plan)
    np.testing.assert_array_equal(run.model_ids(plan), synthetic.model_ids[wanted])
    masks, margins = run.masks_and_margins(plan)
    np.testing.assert_array_equal(masks, synthetic.masks[wanted])
    np.testing.assert_array_equal(margins, synthetic.margins[wanted])
    assert masks.shape == (wanted.sum(), N_TRAIN)


def test_models_table_sorted_with_selected_columns(synthetic):
    table = synthetic.run.models(plan="alpha", columns=["seed", "plan"])
    assert table.column_names == ["seed", "plan"]
    assert table["seed"].to_pylist() == [7 * i for i in range(25)]
    full = synthetic.run.models()
    assert full.schema.names == models_written_schema(N_TRAIN, N_EVAL).names
    assert full["model_id"].to_pylist() == list(range(40))
    with pytest.raises(StoreError, match="no column"):
        synthetic.run.models(columns=["nope"])


def test_empty_run_reads_as_zero_models(tmp_path):
    run = Run(tmp_path)
    run.write_examples(examples_frame())
    assert run.masks().shape == (0, N_TRAIN)
    assert run.margins().shape == (0, N_EVAL)
    assert run.models().num_rows == 0
    assert run.done_model_ids() == set()


def test_missing_examples_is_a_clear_error(tmp_path):
    with pytest.raises(
        StoreError, match="examples.parquet does not exist; run `datamodels prepare`"
    ):
        Run(tmp_path).masks()


def test_done_model_ids_and_quarantine(synthetic):
    run = synthetic.run
    assert run.done_model_ids() == set(range(40))
    moved = run.quarantine(synthetic.shard_paths[1], "torn on resume")
    assert moved == f"models/_invalid/{synthetic.shard_paths[1].split('/')[1]}"
    assert run.fs.isfile(moved) and not run.fs.exists(synthetic.shard_paths[1])
    assert "torn on resume" in run.fs.read_bytes(moved + ".reason.txt").decode()
    assert run.done_model_ids() == set(range(10)) | set(range(25, 40))
    assert len(run.shard_files()) == 2
    np.testing.assert_array_equal(run.masks("alpha"), synthetic.masks[:10])
    with pytest.raises(StoreError, match="nothing to quarantine"):
        run.quarantine(synthetic.shard_paths[1], "again")


def test_quarantine_never_overwrites(synthetic):
    run = synthetic.run
    name = synthetic.shard_paths[0].split("/")[1]
    data = run.fs.read_bytes(synthetic.shard_paths[0])
    first = run.quarantine(name, "one")
    run.fs.write_bytes_atomic(synthetic.shard_paths[0], data)
    second = run.quarantine(name, "two")
    assert first != second and run.fs.isfile(first) and run.fs.isfile(second)


def test_readers_refuse_a_torn_shard_by_name(synthetic):
    path = synthetic.run.fs.join(synthetic.shard_paths[2])
    with open(path, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(StoreError, match=synthetic.shard_paths[2].split("/")[1] + ": torn"):
        synthetic.run.masks()


def test_failures_empty_then_appended(synthetic):
    run = synthetic.run
    empty = run.failures()
    assert list(empty.columns) == FAILURES_SCHEMA.names and len(empty) == 0
    run.append_failures(
        pd.DataFrame(
            {
                "model_id": [3],
                "plan": ["alpha"],
                "attempt": [1],
                "error_type": ["OOM"],
                "message": ["out of memory"],
            }
        )
    )
    run.append_failures(
        pd.DataFrame(
            {
                "model_id": [4, 5],
                "plan": ["alpha"] * 2,
                "attempt": [2, 3],
                "error_type": ["TrainingError"] * 2,
                "message": ["nan loss", None],
                "worker": ["w1", "w2"],
            }
        )
    )
    failures = run.failures()
    assert failures["model_id"].tolist() == [3, 4, 5]
    assert failures["attempt"].tolist() == [1, 2, 3]
    assert pd.isna(failures["worker"].iloc[0]) and failures["worker"].iloc[2] == "w2"
    schema = pq.read_schema(run.fs.join("failures.parquet"))
    assert schema.field("attempt").type == pa.int32()


def test_scores_round_trip(synthetic):
    run = synthetic.run
    scores = np.random.default_rng(3).normal(size=(3, N_TRAIN)).astype(np.float32)
    run.write_scores("downsampling", np.array([2, 0, 1]), scores)
    assert run.score_methods() == ["downsampling"]
    targets, read = run.scores("downsampling")
    np.testing.assert_array_equal(targets, [0, 1, 2])
    np.testing.assert_array_equal(read, scores[[1, 2, 0]])
    with pytest.raises(StoreError, match="expected"):
        run.write_scores("loo", np.arange(2), np.zeros((2, N_TRAIN + 1)))
    with pytest.raises(StoreError, match="method name"):
        run.write_scores("bad-name", np.arange(1), np.zeros((1, N_TRAIN)))


def test_remote_style_uri_reads_the_same(tmp_path):
    synthetic = build_run(tmp_path / "r")
    run = Run(f"file://{tmp_path / 'r'}")
    np.testing.assert_array_equal(run.masks("loo"), synthetic.masks[25:])


def test_object_store_code_path(tmp_path):
    """Writes as on s3:// (one output stream, filesystem move), views from pyarrow datasets."""
    run = Run(tmp_path)
    run.fs.is_local = False
    assert run.local_path("data/examples.beton") is None
    for directory in ("models/_invalid", "scores"):
        (tmp_path / directory).mkdir(parents=True)  # object stores need no directories
    run.write_config("seed: 1\n")
    run.write_examples(examples_frame())
    rng = np.random.default_rng(5)
    masks, margins = rng.random((6, N_TRAIN)) < 0.5, rng.normal(size=(6, N_EVAL))
    first = run.write_models(shard_table(np.arange(3), "alpha", masks[:3], margins[:3]))
    run.write_models(shard_table(np.arange(3, 6), "alpha", masks[3:], margins[3:]))
    np.testing.assert_array_equal(run.masks(), masks)
    run.quarantine(first, "test")
    assert run.done_model_ids() == {3, 4, 5}
    result = query(run, "SELECT count(*) AS n, sum(list_sum(margins)) AS s FROM models")
    assert result["n"].item() == 3
    assert result["s"].item() == pytest.approx(
        float(margins[3:].astype(np.float32).sum()), rel=1e-5
    )
    assert sorted(p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name) == []


def test_readers_refuse_a_corrupt_page_naming_the_shard(synthetic):
    """A corrupt margins page (footer intact) raises a one-line error naming the shard, instead
    of returning ~1e38 margins."""
    run, shard = synthetic.run, synthetic.shard_paths[2]
    corrupt_page(run.fs.join(shard), "margins")
    name = shard.split("/")[1]
    for read in (run.margins, run.masks_and_margins, lambda: run.models(columns=["margins"])):
        with pytest.raises(StoreError, match=f"{name}: corrupt") as caught:
            read()
        assert "\n" not in str(caught.value) and "checksum" in str(caught.value).lower()
    # Columns whose pages are intact still read.
    np.testing.assert_array_equal(run.masks(), synthetic.masks)
    np.testing.assert_array_equal(run.masks_of(np.array([30, 2])), synthetic.masks[[30, 2]])


def test_corrupt_page_in_another_table_is_refused(synthetic):
    run = synthetic.run
    run.write_scores("loo", np.arange(3), np.ones((3, N_TRAIN)))
    corrupt_page(run.fs.join("scores/loo.parquet"), "scores", b"\x00" * 8)
    with pytest.raises(StoreError, match="scores/loo.parquet.*corrupt"):
        run.scores("loo")


def test_old_shard_without_checksums_or_hash_reads(synthetic):
    """Shards of older releases (no page checksums, no config_hash) read as before."""
    run = synthetic.run
    table = pq.read_table(run.fs.join(synthetic.shard_paths[0]))
    assert b"config_hash" not in table.schema.metadata
    run.quarantine(synthetic.shard_paths[0], "replaced by an old-style copy")
    pq.write_table(table, run.fs.join(synthetic.shard_paths[0]))
    np.testing.assert_array_equal(run.margins(), synthetic.margins)


def test_readers_refuse_a_shard_of_another_config(tmp_path):
    run = build_planned_run(tmp_path / "a").run
    other = build_planned_run(tmp_path / "b", seed=4, shards=((12, 14),))
    path = other.shard_paths[0]
    run.fs.write_bytes_atomic(path, other.run.fs.read_bytes(path))
    with pytest.raises(StoreError, match=path.split("/")[1] + ": foreign"):
        run.masks()


def test_readers_refuse_duplicate_model_ids_naming_both_shards(synthetic):
    """Two shards holding one model_id: readers raise naming both files, whatever the order."""
    run = synthetic.run
    ids = np.array([3, 77])  # 3 is in the first shard
    extra = run.write_models(
        shard_table(ids, "alpha", np.zeros((2, N_TRAIN), bool), np.zeros((2, N_EVAL)))
    )
    for read in (run.masks, run.margins, run.model_ids, run.models):
        with pytest.raises(StoreError, match="duplicate model_ids") as caught:
            read()
        message = str(caught.value)
        assert extra in message and synthetic.shard_paths[0] in message and "3" in message
    # Reading a plan without the duplicate is unaffected and deterministic.
    first, second = run.masks("loo"), run.masks("loo")
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, synthetic.masks[25:])
