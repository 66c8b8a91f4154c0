"""Schemas match the run-directory contract (docs/run-directory.md) exactly, and the schema
check names the file and the fix."""

import pyarrow as pa
import pytest

from datamodels.errors import StoreError
from datamodels.store import (
    EVALUATION_SCHEMA,
    EXAMPLES_SCHEMA,
    FAILURES_SCHEMA,
    SCHEMA_VERSION,
    TARGETS_SCHEMA,
    WEIGHTS_SCHEMA,
    check_schema,
    models_schema,
    schema_version_of,
    scores_schema,
)
from datamodels.store.schemas import types_match


def columns(schema: pa.Schema) -> list[tuple[str, pa.DataType]]:
    return [(field.name, field.type) for field in schema]


def test_models_schema_is_the_contract():
    schema = models_schema(7, 3)
    assert columns(schema) == [
        ("model_id", pa.int64()),
        ("plan", pa.string()),
        ("alpha", pa.float32()),
        ("seed", pa.int64()),
        ("mask", pa.list_(pa.bool_(), 7)),
        ("margins", pa.list_(pa.float32(), 3)),
        ("train_loss", pa.float32()),
        ("eval_accuracy", pa.float32()),
        ("seconds", pa.float32()),
        ("attempt", pa.int32()),
        ("worker", pa.string()),
    ]
    assert schema.metadata == {b"schema_version": b"3", b"n_train": b"7", b"n_eval": b"3"}


def test_table_schemas_are_the_contract():
    assert columns(EXAMPLES_SCHEMA) == [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("label", pa.int64()),
        ("original_label", pa.int64()),
        ("eval_position", pa.int64()),
        ("train_position", pa.int64()),
    ]
    nullable = {field.name for field in EXAMPLES_SCHEMA if field.nullable}
    assert nullable == {"original_label", "eval_position", "train_position"}
    assert columns(FAILURES_SCHEMA) == [
        ("model_id", pa.int64()),
        ("plan", pa.string()),
        ("attempt", pa.int32()),
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("worker", pa.string()),
    ]
    assert columns(WEIGHTS_SCHEMA) == [
        ("target", pa.int64()),
        ("train_position", pa.int64()),
        ("weight", pa.float32()),
    ]
    assert columns(TARGETS_SCHEMA) == [
        ("target", pa.int64()),
        ("bias", pa.float32()),
        ("lam", pa.float32()),
        ("val_mse", pa.float32()),
        ("val_spearman", pa.float32()),
        ("nnz", pa.int64()),
    ]
    assert columns(scores_schema(5)) == [
        ("target", pa.int64()),
        ("scores", pa.list_(pa.float32(), 5)),
        ("stderr", pa.list_(pa.float32(), 5)),
    ]
    assert scores_schema(5).field("stderr").nullable
    assert columns(EVALUATION_SCHEMA) == [
        ("method", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("n_targets", pa.int64()),
        ("details", pa.string()),
    ]
    for schema in (
        EXAMPLES_SCHEMA,
        FAILURES_SCHEMA,
        WEIGHTS_SCHEMA,
        TARGETS_SCHEMA,
        EVALUATION_SCHEMA,
        scores_schema(5),
        models_schema(1, 1),
    ):
        assert schema_version_of(schema) == SCHEMA_VERSION == 3


def test_check_schema_accepts_the_schema_and_extra_columns():
    check_schema(WEIGHTS_SCHEMA, WEIGHTS_SCHEMA, "w.parquet")
    check_schema(WEIGHTS_SCHEMA.append(pa.field("note", pa.string())), WEIGHTS_SCHEMA, "w.parquet")


def test_check_schema_names_file_and_column():
    wrong = WEIGHTS_SCHEMA.set(2, pa.field("weight", pa.float64()))
    with pytest.raises(StoreError, match=r"w\.parquet.*'weight' has type double, expected float"):
        check_schema(wrong, WEIGHTS_SCHEMA, "w.parquet")
    missing = WEIGHTS_SCHEMA.remove(1)
    with pytest.raises(StoreError, match="'train_position'.*missing"):
        check_schema(missing, WEIGHTS_SCHEMA, "w.parquet")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, "no schema_version"),
        ({b"schema_version": b"0"}, "schema_version 0.*re-run the stage"),
        ({b"schema_version": b"4"}, "schema_version 4.*upgrade datamodels"),
    ],
)
def test_check_schema_refuses_other_versions(metadata, expected):
    schema = (
        WEIGHTS_SCHEMA.with_metadata(metadata) if metadata else WEIGHTS_SCHEMA.remove_metadata()
    )
    with pytest.raises(StoreError, match=r"runs/a/w\.parquet.*" + expected):
        check_schema(schema, WEIGHTS_SCHEMA, "runs/a/w.parquet")


def test_types_match_ignores_item_names_and_nullability_but_not_size():
    other_item = pa.list_(pa.field("element", pa.bool_(), nullable=False), 4)
    assert types_match(other_item, pa.list_(pa.bool_(), 4))
    assert not types_match(pa.list_(pa.bool_(), 5), pa.list_(pa.bool_(), 4))
    assert not types_match(pa.list_(pa.bool_()), pa.list_(pa.bool_(), 4))
    assert not types_match(pa.list_(pa.float64(), 4), pa.list_(pa.float32(), 4))


def test_version_1_files_still_read():
    """schema_version 2 only added optional examples columns (source_path, class_name): a
    file written by version 1, without them, passes the same checks."""
    from datamodels.store.schema_checks import READABLE_VERSIONS, version_problem

    assert 1 in READABLE_VERSIONS and SCHEMA_VERSION == 3
    old = WEIGHTS_SCHEMA.with_metadata({b"schema_version": b"1"})
    check_schema(old, WEIGHTS_SCHEMA, "w.parquet")  # no error
    assert version_problem(old, "w.parquet") is None
