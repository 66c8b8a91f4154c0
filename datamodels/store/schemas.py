"""The Parquet schemas of the run directory, and where each table lives.

Every table has one `pyarrow.Schema` here (the applications' tables in
`datamodels.store.application_schemas`, the checks in `datamodels.store.schema_checks`; both
re-exported here), carrying ``schema_version`` in its metadata. Column
names and types are the public contract that notebooks, SQL and outside checks read:

=============================  ==============================================================
``examples.parquet``           `EXAMPLES_SCHEMA`
``models/*.parquet``           `models_schema` (n_train, n_eval); written with
                               `models_written_schema` (plus ``trainer``)
``failures.parquet``           `FAILURES_SCHEMA`
``datamodels/weights.parquet`` `WEIGHTS_SCHEMA`
``datamodels/targets.parquet`` `TARGETS_SCHEMA`
``scores/<method>.parquet``    `scores_schema` (n_train)
``evaluation.parquet``         `EVALUATION_SCHEMA`
``plan_masks/<plan>.parquet``  `PLAN_MASKS_SCHEMA` (stored-mask plans: ``stored``, ``removal``)
``removals/sets.parquet``      `REMOVAL_SETS_SCHEMA`
``removals/results.parquet``   `REMOVAL_RESULTS_SCHEMA`
``transfer/source_classes.parquet``  `SOURCE_CLASSES_SCHEMA`
``sparse_layer/*.parquet``     `SPARSE_PATH_SCHEMA`, `SPARSE_WEIGHTS_SCHEMA`,
                               `SPARSE_FEATURES_SCHEMA`, `SPARSE_SUMMARY_SCHEMA`
``applications/alpha_effect``  `ALPHA_EFFECT_SCHEMA` (``.parquet``)
``applications/lds_curve``     `LDS_CURVE_SCHEMA` (``.parquet``)
=============================  ==============================================================

Checks compare column names and types; nullability and list item names are not compared (a
file written by another Parquet tool is still readable when its types match).

``SCHEMA_VERSION`` stayed 1 with page checksums and the shards' ``config_hash`` key-value
metadata (metadata additions; files without them still read). It is 2 since
``examples.parquet`` may carry ``source_path`` and ``class_name``; files of version 1 read
unchanged (`READABLE_VERSIONS`). It is 3 since model shards carry ``trainer`` (the trainer
and code version that made each model, ``trainers.versions``); shards of versions 1 and 2
lack it, read unchanged, and count as version 1 of the run's trainer.
"""

from __future__ import annotations

import pyarrow as pa

from datamodels.errors import StoreError
from datamodels.plans import PLAN_MASKS_DIR
from datamodels.store.application_schemas import (
    ALPHA_EFFECT_SCHEMA,
    LDS_CURVE_SCHEMA,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_SCHEMA,
    SPARSE_FEATURES_SCHEMA,
    SPARSE_PATH_SCHEMA,
    SPARSE_SUMMARY_SCHEMA,
    SPARSE_WEIGHTS_SCHEMA,
    attack_schema,
)
from datamodels.store.schema_checks import (
    SCHEMA_VERSION,
    check_schema,
    column_problems,
    schema_version_of,
    types_match,
    version_problem,
)
from datamodels.store.schema_checks import column as _field
from datamodels.store.schema_checks import schema_metadata as _metadata

__all__ = [  # the schemas and checks of the other modules, read from here
    "ALPHA_EFFECT_SCHEMA",
    "LDS_CURVE_SCHEMA",
    "PLAN_MASKS_DIR",
    "REMOVAL_RESULTS_SCHEMA",
    "REMOVAL_SETS_SCHEMA",
    "SCHEMA_VERSION",
    "SPARSE_FEATURES_SCHEMA",
    "SPARSE_PATH_SCHEMA",
    "SPARSE_SUMMARY_SCHEMA",
    "SPARSE_WEIGHTS_SCHEMA",
    "attack_schema",
    "check_schema",
    "column_problems",
    "schema_version_of",
    "types_match",
    "version_problem",
]



def models_schema(n_train: int, n_eval: int) -> pa.Schema:
    """One row per trained model: its subset ``mask: bool[n_train]`` and
    ``margins: float32[n_eval]``."""
    if n_train < 0 or n_eval < 0:
        raise StoreError(f"models_schema needs n_train, n_eval >= 0, got {n_train}, {n_eval}")
    return pa.schema(
        [
            _field("model_id", pa.int64()),
            _field("plan", pa.string()),
            _field("alpha", pa.float32()),
            _field("seed", pa.int64()),
            _field("mask", pa.list_(pa.bool_(), n_train)),
            _field("margins", pa.list_(pa.float32(), n_eval)),
            _field("train_loss", pa.float32()),
            _field("eval_accuracy", pa.float32()),
            _field("seconds", pa.float32()),
            _field("attempt", pa.int32()),
            _field("worker", pa.string(), nullable=True),
        ],
        metadata=_metadata(n_train=n_train, n_eval=n_eval),
    )


# what ``train`` writes: models_schema plus ``trainer``, the label of the trainer code that
# made the model (``lbfgs@1``: path@version, ``+`` between a wrapper and what it wraps;
# ``trainers.versions``). Null, or absent in shards of schema_version 2 and earlier: made
# before versions were recorded, counted as version 1 of the run's trainer. The readers'
# checks ask only models_schema's columns.
MODELS_OPTIONAL_COLUMNS = ("trainer",)


def models_written_schema(n_train: int, n_eval: int) -> pa.Schema:
    """`models_schema` plus the optional ``trainer`` column (what a shard is written with)."""
    base = models_schema(n_train, n_eval)
    return pa.schema(
        [*base, *(_field(name, pa.string(), nullable=True) for name in MODELS_OPTIONAL_COLUMNS)],
        metadata=base.metadata,
    )


EXAMPLES_SCHEMA = pa.schema(
    [
        _field("index", pa.int64()),
        _field("split", pa.string()),
        _field("label", pa.int64()),
        _field("original_label", pa.int64(), nullable=True),
        _field("eval_position", pa.int64(), nullable=True),
        _field("train_position", pa.int64(), nullable=True),
    ],
    metadata=_metadata(),
)
# what ``prepare`` writes: EXAMPLES_SCHEMA plus where each example came from, null where the
# source does not say (``imagefolder``: the image file relative to ``dataset.path``, and the
# class folder's name). Readers ask only EXAMPLES_SCHEMA's columns, so runs written before
# these columns existed read unchanged.
EXAMPLES_SOURCE_COLUMNS = ("source_path", "class_name")
EXAMPLES_WRITTEN_SCHEMA = pa.schema(
    [*EXAMPLES_SCHEMA, *(_field(name, pa.string(), nullable=True)
                        for name in EXAMPLES_SOURCE_COLUMNS)],
    metadata=_metadata(),
)

FAILURES_SCHEMA = pa.schema(
    [
        _field("model_id", pa.int64()),
        _field("plan", pa.string()),
        _field("attempt", pa.int32()),
        _field("error_type", pa.string()),
        _field("message", pa.string(), nullable=True),
        _field("worker", pa.string(), nullable=True),
    ],
    metadata=_metadata(),
)

WEIGHTS_SCHEMA = pa.schema(
    [
        _field("target", pa.int64()),
        _field("train_position", pa.int64()),
        _field("weight", pa.float32()),
    ],
    metadata=_metadata(),
)

TARGETS_SCHEMA = pa.schema(
    [
        _field("target", pa.int64()),
        _field("bias", pa.float32()),
        _field("lam", pa.float32()),
        _field("val_mse", pa.float32(), nullable=True),
        _field("val_spearman", pa.float32(), nullable=True),
        _field("nnz", pa.int64()),
    ],
    metadata=_metadata(),
)

EVALUATION_SCHEMA = pa.schema(
    [
        _field("method", pa.string()),
        _field("metric", pa.string()),
        _field("value", pa.float64(), nullable=True),
        _field("n_targets", pa.int64(), nullable=True),
        _field("details", pa.string(), nullable=True),
    ],
    metadata=_metadata(),
)


def scores_schema(n_train: int) -> pa.Schema:
    """One row per target: ``scores: float32[n_train]`` and its optional (null) ``stderr``."""
    if n_train < 0:
        raise StoreError(f"scores_schema needs n_train >= 0, got {n_train}")
    return pa.schema(
        [
            _field("target", pa.int64()),
            _field("scores", pa.list_(pa.float32(), n_train)),
            _field("stderr", pa.list_(pa.float32(), n_train), nullable=True),
        ],
        metadata=_metadata(n_train=n_train),
    )


SELF_SCORES_SCHEMA = pa.schema(
    [("train_position", pa.int64()), ("score", pa.float32()), ("stderr", pa.float32())],
    metadata=_metadata(),
)

# transfer/source_classes.parquet (transfer runs): one row per source class, the mask
# column ``train_position`` it is, its name and how many source examples it holds.
SOURCE_CLASSES_SCHEMA = pa.schema(
    [
        _field("train_position", pa.int64()),
        _field("name", pa.string()),
        _field("n_examples", pa.int64()),
    ],
    metadata=_metadata(),
)

CHECKPOINT_INDEX_SCHEMA = pa.schema(
    [
        _field("model_id", pa.int64()),
        _field("epoch", pa.int32()),
        _field("lr", pa.float64()),
        _field("path", pa.string()),
    ],
    metadata=_metadata(),
)


PLAN_MASKS_SCHEMA = pa.schema(
    [
        _field("mask_index", pa.int64()),
        _field("removed", pa.list_(pa.int64())),  # train positions left out of the full set
    ],
    metadata=_metadata(),
)


# -- where each table lives (paths relative to the run directory) -------------------------------

CONFIG_PATH = "config.yaml"
EXAMPLES_PATH = "examples.parquet"
MODELS_DIR = "models"
COMPACTING_DIR = "models/_compacting"  # an interrupted `datamodels compact` (store/compact.py)
INVALID_DIR = "models/_invalid"
FAILURES_PATH = "failures.parquet"
WEIGHTS_PATH = "datamodels/weights.parquet"
TARGETS_PATH = "datamodels/targets.parquet"
SCORES_DIR = "scores"
SELF_SCORES_DIR = "self_scores"
EVALUATION_PATH = "evaluation.parquet"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_INDEX_DIR = "checkpoints/index"
ATTACKS_DIR = "attacks"
REMOVAL_SETS_PATH = "removals/sets.parquet"
REMOVAL_RESULTS_PATH = "removals/results.parquet"
SOURCE_CLASSES_PATH = "transfer/source_classes.parquet"
SPARSE_LAYER_DIR = "sparse_layer"
SPARSE_PATH_PATH = "sparse_layer/path.parquet"
SPARSE_WEIGHTS_PATH = "sparse_layer/weights.parquet"
SPARSE_FEATURES_PATH = "sparse_layer/features.parquet"
SPARSE_SUMMARY_PATH = "sparse_layer/summary.parquet"
ALPHA_EFFECT_PATH = "applications/alpha_effect.parquet"
LDS_CURVE_PATH = "applications/lds_curve.parquet"
