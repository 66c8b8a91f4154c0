"""The run store: Parquet schemas, atomic shard writes, readers, verification and SQL.

The run directory is the public contract: its files and columns are what notebooks, SQL and
outside checks read. Start from `Run`::

    run = Run("runs/cifar")            # or "s3://bucket/runs/cifar"
    masks, margins = run.masks_and_margins(plan="alpha")   # bool[m, n_train], float32[m, n_eval]
    problems = verify(run)             # torn / corrupt / schema / length / foreign / plan /
                                       # duplicate / missing, by file
    query(run, "SELECT mask[43] AS included, avg(margins[18]) FROM models GROUP BY 1")

Every table is written with Parquet page checksums and every shard may record the run's
``config_hash`` (key-value metadata); schema_version stays 1 and older files still read.
"""

from datamodels.store.fs import RunFS
from datamodels.store.problems import UNUSABLE_KINDS, Problem
from datamodels.store.query import connect, query, read_statements
from datamodels.store.run import Run
from datamodels.store.schemas import (
    ATTACKS_DIR,
    CHECKPOINT_INDEX_DIR,
    CHECKPOINT_INDEX_SCHEMA,
    CHECKPOINTS_DIR,
    CONFIG_PATH,
    EVALUATION_PATH,
    EVALUATION_SCHEMA,
    EXAMPLES_PATH,
    EXAMPLES_SCHEMA,
    FAILURES_PATH,
    FAILURES_SCHEMA,
    INVALID_DIR,
    MODELS_DIR,
    PLAN_MASKS_DIR,
    PLAN_MASKS_SCHEMA,
    REMOVAL_RESULTS_PATH,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_PATH,
    REMOVAL_SETS_SCHEMA,
    SCHEMA_VERSION,
    SCORES_DIR,
    SELF_SCORES_DIR,
    SELF_SCORES_SCHEMA,
    SOURCE_CLASSES_PATH,
    SOURCE_CLASSES_SCHEMA,
    TARGETS_PATH,
    TARGETS_SCHEMA,
    WEIGHTS_PATH,
    WEIGHTS_SCHEMA,
    attack_schema,
    check_schema,
    models_schema,
    models_written_schema,
    schema_version_of,
    scores_schema,
)
from datamodels.store.shards import (
    conform_table,
    fixed_size_list_array,
    fixed_size_list_to_numpy,
    models_table,
    shard_name,
    write_model_shard,
    write_table_atomic,
)
from datamodels.store.verify import valid_shards, verify

__all__ = [
    "PLAN_MASKS_DIR",
    "PLAN_MASKS_SCHEMA",
    "REMOVAL_RESULTS_PATH",
    "REMOVAL_RESULTS_SCHEMA",
    "REMOVAL_SETS_PATH",
    "REMOVAL_SETS_SCHEMA",
    "ATTACKS_DIR",
    "SOURCE_CLASSES_PATH",
    "SOURCE_CLASSES_SCHEMA",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_INDEX_DIR",
    "CHECKPOINT_INDEX_SCHEMA",
    "SELF_SCORES_DIR",
    "SELF_SCORES_SCHEMA",
    "attack_schema",
    "CONFIG_PATH",
    "EVALUATION_PATH",
    "EVALUATION_SCHEMA",
    "EXAMPLES_PATH",
    "EXAMPLES_SCHEMA",
    "FAILURES_PATH",
    "FAILURES_SCHEMA",
    "INVALID_DIR",
    "MODELS_DIR",
    "SCHEMA_VERSION",
    "SCORES_DIR",
    "TARGETS_PATH",
    "TARGETS_SCHEMA",
    "UNUSABLE_KINDS",
    "WEIGHTS_PATH",
    "WEIGHTS_SCHEMA",
    "Problem",
    "Run",
    "RunFS",
    "check_schema",
    "conform_table",
    "connect",
    "fixed_size_list_array",
    "fixed_size_list_to_numpy",
    "models_schema",
    "models_written_schema",
    "models_table",
    "query",
    "read_statements",
    "schema_version_of",
    "scores_schema",
    "shard_name",
    "valid_shards",
    "verify",
    "write_model_shard",
    "write_table_atomic",
]
