"""The Parquet schemas of the run directory (DESIGN §3) and the checks against them.

Every table has one `pyarrow.Schema` here, carrying ``schema_version`` in its metadata. Column
names and types are the public contract that notebooks, SQL and outside checks read:

=============================  ==============================================================
``examples.parquet``           `EXAMPLES_SCHEMA`
``models/*.parquet``           `models_schema` (n_train, n_eval)
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

``SCHEMA_VERSION`` stays 1 with page checksums and the shards' ``config_hash`` key-value
metadata: both are metadata additions (columns unchanged), and files without them still read.
"""

from __future__ import annotations

import pyarrow as pa

from datamodels.errors import StoreError

SCHEMA_VERSION = 1
_VERSION_KEY = b"schema_version"


def _metadata(**extra: int) -> dict[bytes, bytes]:
    metadata = {_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    metadata.update({key.encode(): str(value).encode() for key, value in extra.items()})
    return metadata


def _field(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


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


# The effect of subset size (datamodels.applications.alpha_effect): one row per (α level,
# target). A level is one α of an ``alpha_grid`` plan or one ``alpha`` plan; ``n_models``
# fitted the level's datamodels, ``n_heldout`` other models of the level measured
# ``lds_level``; ``reference`` names the weights top_overlap etc. compare with (the run's
# datamodels, or the largest α level).
ALPHA_EFFECT_SCHEMA = pa.schema(
    [
        _field("plan", pa.string()),
        _field("alpha", pa.float64()),
        _field("target", pa.int64()),
        _field("n_models", pa.int64()),
        _field("n_heldout", pa.int64()),
        _field("k", pa.int64()),
        _field("reference", pa.string()),
        _field("top_helpful", pa.list_(pa.int64())),
        _field("top_overlap", pa.float64(), nullable=True),
        _field("sign_agreement", pa.float64(), nullable=True),
        _field("weight_correlation", pa.float64(), nullable=True),
        _field("l1", pa.float64()),
        _field("nnz", pa.int64()),
        _field("lds_level", pa.float64(), nullable=True),
        _field("lds_eval", pa.float64(), nullable=True),
    ],
    metadata=_metadata(),
)

# LDS against the number of models (datamodels.applications.alpha_effect.lds_curve): one row
# per model count m: datamodels fitted on the first m models of the fitting plan, LDS on the
# held-out plan ``plan``.
LDS_CURVE_SCHEMA = pa.schema(
    [
        _field("n_models", pa.int64()),
        _field("lds", pa.float64(), nullable=True),
        _field("stderr", pa.float64(), nullable=True),
        _field("n_targets", pa.int64()),
        _field("plan", pa.string()),
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

# One row per removal set (mask of the removal plan): which method's scores chose it, for which
# target, how many points; kind 'baseline' (mask 0, nothing removed), 'grid' (k from the plan's
# ks) or 'brittle' (the method's predicted smallest flipping k, capped).
REMOVAL_SETS_SCHEMA = pa.schema(
    [
        _field("mask_index", pa.int64()),
        _field("method", pa.string(), nullable=True),
        _field("target", pa.int64(), nullable=True),
        _field("k", pa.int64()),
        _field("kind", pa.string()),
        _field("predicted", pa.float64(), nullable=True),
        _field("reference_margin", pa.float64(), nullable=True),
        _field("predicted_support", pa.float64(), nullable=True),
    ],
    metadata=_metadata(),
)

REMOVAL_RESULTS_SCHEMA = pa.schema(
    [
        _field("method", pa.string()),
        _field("target", pa.int64()),
        _field("k", pa.int64()),
        _field("kind", pa.string()),
        _field("predicted", pa.float64()),
        _field("actual", pa.float64(), nullable=True),
        _field("stderr", pa.float64(), nullable=True),
        _field("n_seeds", pa.int64()),
        _field("baseline_margin", pa.float64(), nullable=True),
        _field("retrained_margin", pa.float64(), nullable=True),
        _field("predicted_flipped", pa.bool_()),
        _field("flipped", pa.bool_(), nullable=True),
        _field("predicted_support", pa.float64(), nullable=True),
    ],
    metadata=_metadata(),
)


def attack_schema(input_dim: int) -> pa.Schema:
    """One row per attack: the perturbation ``delta`` (float32[input_dim]) and the margins after
    each perturb-and-retrain round."""
    return pa.schema(
        [
            ("target", pa.int64()),
            ("train_position", pa.int64()),
            ("model_id", pa.int64()),
            ("budget", pa.float64()),
            ("flipped", pa.bool_()),
            ("margins", pa.list_(pa.float64())),
            ("delta", pa.list_(pa.float32(), input_dim)),
        ],
        metadata=_metadata(),
    )


# -- sparse decision layers (``datamodels sparse-layer``) ---------------------------------------

SPARSE_PATH_SCHEMA = pa.schema(
    [
        _field("lam_index", pa.int32()),
        _field("lam", pa.float64()),
        _field("alpha", pa.float64()),
        _field("objective", pa.float64()),
        _field("kkt", pa.float64()),
        _field("converged", pa.bool_()),
        _field("iterations", pa.int64()),
        _field("seconds", pa.float64()),
        _field("nnz", pa.int64()),
        _field("max_features_per_class", pa.int64()),
        _field("mean_features_per_class", pa.float64()),
        _field("train_accuracy", pa.float64()),
        _field("val_accuracy", pa.float64()),
        _field("test_accuracy", pa.float64()),
        _field("bias", pa.list_(pa.float64())),
        _field("chosen", pa.bool_()),
    ],
    metadata=_metadata(),
)
"""One row per λ of the sparse layer's path: objective and KKT violation on the fitting
rows, density, accuracies, the class biases, and which λ was chosen."""

SPARSE_WEIGHTS_SCHEMA = pa.schema(
    [
        _field("lam_index", pa.int32()),
        _field("class", pa.int64()),
        _field("feature", pa.int64()),
        _field("weight", pa.float64()),
        _field("raw_weight", pa.float64()),
    ],
    metadata=_metadata(),
)
"""One row per nonzero weight per λ: ``weight`` on the standardised feature, ``raw_weight``
= weight / feature_scale on the raw one."""

SPARSE_FEATURES_SCHEMA = pa.schema(
    [
        _field("class", pa.int64()),
        _field("rank", pa.int32()),
        _field("feature", pa.int64()),
        _field("weight", pa.float64()),
        _field("feature_mean", pa.float64()),
        _field("feature_scale", pa.float64()),
        _field("top_train_positions", pa.list_(pa.int64())),
        _field("top_activations", pa.list_(pa.float64())),
    ],
    metadata=_metadata(),
)
"""The chosen layer for inspection: per class its features by |weight| (rank 0 first), with
the training inputs that activate each feature most."""

SPARSE_SUMMARY_SCHEMA = pa.schema(
    [
        _field("model_id", pa.int64()),
        _field("checkpoint", pa.string()),
        _field("num_features", pa.int64()),
        _field("num_classes", pa.int64()),
        _field("alpha", pa.float64()),
        _field("max_features", pa.int64()),
        _field("chosen_lam_index", pa.int32()),
        _field("chosen_lam", pa.float64()),
        _field("chosen_max_features_per_class", pa.int64()),
        _field("sparse_val_accuracy", pa.float64()),
        _field("sparse_test_accuracy", pa.float64()),
        _field("dense_val_accuracy", pa.float64()),
        _field("dense_test_accuracy", pa.float64()),
        _field("n_fit", pa.int64()),
        _field("n_val", pa.int64()),
        _field("n_test", pa.int64()),
    ],
    metadata=_metadata(),
)
"""One row: the chosen sparse layer beside the model's own dense last layer."""


# -- checks ------------------------------------------------------------------------------------


def types_match(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores list item names and nullability."""
    if pa.types.is_fixed_size_list(expected):
        return (
            pa.types.is_fixed_size_list(actual)
            and actual.list_size == expected.list_size
            and types_match(actual.value_type, expected.value_type)
        )
    if pa.types.is_list(expected) or pa.types.is_large_list(expected):
        return type(actual) is type(expected) and types_match(
            actual.value_type, expected.value_type
        )
    return actual.equals(expected)


def schema_version_of(schema: pa.Schema) -> int | None:
    """The ``schema_version`` a file was written with, or None when it carries none."""
    raw = (schema.metadata or {}).get(_VERSION_KEY)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def version_problem(schema: pa.Schema, file: str) -> str | None:
    """Why ``file``'s schema_version cannot be read by this release, or None when it can."""
    version = schema_version_of(schema)
    if version == SCHEMA_VERSION:
        return None
    if version is None:
        return (
            f"{file} has no schema_version metadata, so it was not written by datamodels; "
            "re-create it with the datamodels stage that owns it"
        )
    if version < SCHEMA_VERSION:
        return (
            f"{file} was written with schema_version {version}, this datamodels reads "
            f"{SCHEMA_VERSION}; re-run the stage that writes it, or read it with the "
            "datamodels release that wrote it"
        )
    return (
        f"{file} was written with schema_version {version}, newer than this datamodels "
        f"({SCHEMA_VERSION}); upgrade datamodels (pip install -U datamodels) to read it"
    )


def column_problems(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Missing columns and columns of the wrong type (extra columns are allowed)."""
    problems = []
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            problems.append(f"column {field.name!r} ({field.type}) is missing")
        elif not types_match(actual.field(index).type, field.type):
            problems.append(
                f"column {field.name!r} has type {actual.field(index).type}, expected {field.type}"
            )
    return problems


def check_schema(actual: pa.Schema, expected: pa.Schema, file: str) -> None:
    """Raise `StoreError` naming ``file`` unless ``actual`` has ``expected``'s
    version and columns."""
    problem = version_problem(actual, file)
    if problem is not None:
        raise StoreError(problem)
    problems = column_problems(actual, expected)
    if problems:
        raise StoreError(f"{file} has the wrong schema: " + "; ".join(problems))


# -- where each table lives (paths relative to the run directory) -------------------------------

CONFIG_PATH = "config.yaml"
EXAMPLES_PATH = "examples.parquet"
MODELS_DIR = "models"
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
PLAN_MASKS_DIR = "plan_masks"
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
