"""The Parquet schemas of the tables the applications write: counterfactual removals,
attacks, sparse decision layers, the effect of subset size and the LDS curve.

Paths live with the others in `datamodels.store.schemas`, which re-exports these schemas.
"""

from __future__ import annotations

import pyarrow as pa

from datamodels.store.schema_checks import column as _field
from datamodels.store.schema_checks import schema_metadata as _metadata

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
