"""The ``estimate`` stage for retraining-based estimators: read the models table, call the
pure estimator, write ``scores/<method>.parquet`` (and its standard errors) plus
``self_scores/<method>.parquet`` when the run has margins on its own training examples.

| method          | models it reads                         | utility               |
|-----------------|-----------------------------------------|-----------------------|
| downsampling    | ``estimate.plan`` (alpha subsets)        | margin                |
| downsampling_correct | the same                            | 0/1 correctness       |
| memorization    | the same; self scores only              | 0/1 correctness       |
| banzhaf         | the same (its alpha must be ½)          | margin                |
| shapley         | the first ``alpha_grid`` plan           | margin                |
| beta_shapley    | the same; Beta(a, b) = ``estimate.beta`` | margin               |
| tmc_shapley     | the first ``tmc`` plan                  | margin                |
| loo             | the first ``loo`` plan                  | margin                |
| knn_shapley     | input features (no models)              | K-NN correctness      |
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from datamodels import estimators as est
from datamodels.config import Config
from datamodels.errors import DatamodelsError
from datamodels.plans import plan_models, tmc_layout
from datamodels.store import Run

SELF_DIR = "self_scores"
SELF_SCHEMA = pa.schema(
    [("train_position", pa.int64()), ("score", pa.float32()), ("stderr", pa.float32())],
    metadata={b"schema_version": b"1"},
)
METHODS = (
    "downsampling", "downsampling_correct", "memorization", "banzhaf", "shapley", "beta_shapley",
    "tmc_shapley", "loo", "knn_shapley",
)


class EstimateError(DatamodelsError):
    """The run lacks the models an estimator needs."""


def _plan_of_kind(config: Config, kind: str, method: str) -> str:
    for plan in config.plans:
        if plan.kind == kind:
            return plan.name
    raise EstimateError(f"{method} needs a plan of kind '{kind}' in the config (plans: {', '.join(p.name for p in config.plans)})")


def _positions(run: Run, which: str) -> np.ndarray:
    examples = run.examples()
    chosen = examples[examples["eval_position"].notna()]
    if which != "all":
        chosen = chosen[chosen["split"] == which]
    return np.sort(chosen["eval_position"].to_numpy(np.int64))


def _table(run: Run, plan: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    masks, margins = run.masks_and_margins(plan=plan)
    meta = run.models(plan=plan, columns=["model_id", "alpha"]).to_pandas()
    if len(masks) < 2:
        raise EstimateError(f"plan '{plan}' has {len(masks)} trained models; run `datamodels train` first")
    return masks, margins, meta


def _scores_for(config: Config, run: Run, method: str, targets: np.ndarray) -> est.Scores:
    """Scores float32[len(targets), n_train] of one method on the given eval positions."""
    e = config.estimate
    if method in ("downsampling", "downsampling_correct", "banzhaf", "memorization"):
        masks, margins, meta = _table(run, e.plan)
        utility = margins[:, targets]
        if method in ("downsampling_correct", "memorization"):
            utility = (utility > 0).astype(np.float32)
        if method == "banzhaf":
            return est.banzhaf(masks, utility, alpha=meta["alpha"].to_numpy())
        return est.downsampling(masks, utility)
    if method in ("shapley", "beta_shapley"):
        plan = config.plan(_plan_of_kind(config, "alpha_grid", method))
        masks, margins, meta = _table(run, plan.name)
        grid = est.owen_grid(plan.levels) if plan.levels else None
        alpha = meta["alpha"].to_numpy(np.float64)
        if method == "shapley":
            return est.shapley(masks, margins[:, targets], alpha, grid=grid)
        return est.beta_shapley(masks, margins[:, targets], alpha, beta_params=tuple(e.beta), grid=grid)
    if method == "loo":
        masks, margins, _ = _table(run, _plan_of_kind(config, "loo", method))
        left_out = np.where(masks.all(1), -1, np.argmin(masks, axis=1))
        return est.loo(left_out, margins[:, targets], masks.shape[1])
    if method == "tmc_shapley":
        return _tmc(config, run, targets)
    if method == "knn_shapley":
        return _knn(config, run, targets)
    raise EstimateError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")


def _tmc(config: Config, run: Run, targets: np.ndarray) -> est.Scores:
    plan = config.plan(_plan_of_kind(config, "tmc", "tmc_shapley"))
    masks, margins, meta = _table(run, plan.name)
    n = masks.shape[1]
    planned = plan_models(config, n).select_ids(meta["model_id"].to_numpy())
    perm, step = tmc_layout(planned, n)
    keep = np.zeros(len(step), dtype=bool)
    for p in np.unique(perm):  # a walk's contiguous prefix 0..k (k = n when it was never truncated)
        rows = np.flatnonzero(perm == p)
        present = set(step[rows].tolist())
        k = 0
        while k + 1 in present:
            k += 1
        keep[rows[step[rows] <= k]] = 0 in present
    if not keep.any():
        raise EstimateError(f"tmc plan '{plan.name}' has no walk starting at the empty prefix; retrain it")
    added = np.full(len(step), -1, dtype=np.int64)
    for p in np.unique(perm[keep]):
        order = est.tmc_permutation(config.seed, int(p), n)
        rows = np.flatnonzero(keep & (perm == p))
        added[rows] = np.where(step[rows] > 0, order[np.maximum(step[rows] - 1, 0)], -1)
    if plan.seeds > 1:
        raise EstimateError("tmc_shapley with seeds > 1: average replicates first (not supported yet)")
    return est.tmc_shapley(perm[keep], step[keep], added[keep], margins[keep][:, targets], n)


def _knn(config: Config, run: Run, targets: np.ndarray) -> est.Scores:
    from datamodels.data.beton import decode_resident
    from datamodels.data.examples import train_and_eval_index
    from datamodels.stages import BETON_PATH

    examples = run.examples()
    features, labels = decode_resident(run.local_path(BETON_PATH))
    train_index, eval_index = train_and_eval_index(examples)
    flat = features.reshape(len(features), -1).astype(np.float64)
    return est.knn_shapley(flat[train_index], labels[train_index], flat[eval_index[targets]], labels[eval_index[targets]],
                           config.estimate.knn_k)


def estimate(config: Config, run: Run, method: str) -> dict[str, int]:
    """Write the method's score table (and self scores where possible); returns row counts."""
    if method not in METHODS:
        raise EstimateError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    written = {}
    n_train = run.sizes()[0]
    train_targets = _positions(run, "train")
    if method != "memorization":
        targets = _positions(run, config.estimate.targets)
        scores = _scores_for(config, run, method, targets)
        run.write_scores(method, targets, scores.values, scores.stderr if scores.stderr is not None else None)
        written["scores"] = len(targets)
    if len(train_targets) == n_train and method not in ("knn_shapley",):
        values, stderr = self_scores(config, run, method, train_targets)
        written["self_scores"] = write_self_scores(run, method, values, stderr)
    return written


def self_scores(config: Config, run: Run, method: str, train_targets: np.ndarray, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """float32[n_train] score of each training point on itself (the diagonal), in blocks."""
    n = len(train_targets)
    values = np.zeros(n, dtype=np.float32)
    stderr = np.full(n, np.inf, dtype=np.float32)
    if method in ("memorization", "downsampling", "downsampling_correct"):
        masks, margins, _ = _table(run, config.estimate.plan)
        utility = margins[:, train_targets]
        if method != "downsampling":
            utility = (utility > 0).astype(np.float32)
        scores = est.memorization(masks, utility)
        return scores.values, scores.stderr
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        scores = _scores_for(config, run, method, train_targets[rows])
        values[rows] = scores.values[np.arange(len(rows)), rows]
        if scores.stderr is not None:
            stderr[rows] = scores.stderr[np.arange(len(rows)), rows]
    return values, stderr


def write_self_scores(run: Run, method: str, values: np.ndarray, stderr: np.ndarray | None = None) -> int:
    """Write ``self_scores/<method>.parquet`` (values float[n_train] by train position; stderr
    inf when unknown); returns the row count."""
    values = np.asarray(values, dtype=np.float32)
    stderr = np.full(len(values), np.inf, dtype=np.float32) if stderr is None else np.asarray(stderr, dtype=np.float32)
    frame = pd.DataFrame({"train_position": np.arange(len(values)), "score": values, "stderr": stderr})
    run.write_table(f"{SELF_DIR}/{Run.scores_path(method).split('/')[-1]}", frame, SELF_SCHEMA)
    return len(values)


def read_self_scores(run: Run) -> dict[str, np.ndarray]:
    """method -> float32[n_train] self scores, for every ``self_scores/*.parquet``."""
    out = {}
    for name in run.fs.listdir(SELF_DIR):
        table = run.read_table(f"{SELF_DIR}/{name}", SELF_SCHEMA)
        order = np.argsort(table.column("train_position").to_numpy())
        out[name[: -len(".parquet")]] = table.column("score").to_numpy()[order]
    return out
