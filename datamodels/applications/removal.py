"""Counterfactual removal (Ilyas et al. 2022, §4.1) and brittleness verified by retraining.

For target t and a score table τ (positive = helpful), the removal set of size k is the k
training points with the largest τ_t,i; the predicted change of t's margin when they are
removed is ``predicted = −Σ_{i∈R} τ_t,i`` (negative when helpful points go). The retrained
change is ``actual = mean_s f_t(S∖R; s) − mean_s f_t(S; s)`` over the plan's seeds, S the full
training set (the plan's baseline mask, trained with as many seeds). A prediction *flips*
when the margin turns negative: predicted ``reference + predicted < 0``, actual
``mean_s f_t(S∖R; s) < 0``.

Pure functions over arrays: choosing targets and sets (`choose_targets`, `removal_sets`) and
reducing retrained margins (`removal_results`). The ``removal`` stage
(`datamodels.stages.removal`) reads and writes the run's tables around them.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from datamodels.applications.brittleness import brittleness
from datamodels.config import PlanConfig
from datamodels.errors import ConfigError
from datamodels.plans import removal_layout

# The code version of the removal sets and results (``application.removal``, recorded by the
# ``removal_sets`` and ``removal`` stages): `choose_targets`, `removal_sets`, `removal_results`;
# bump with any change that can move a number it computes for the same inputs.
VERSION = 1


def top_helpful(scores: np.ndarray, k: int) -> np.ndarray:
    """int64[k]: train positions of the k largest ``scores`` (float[n_train]), largest first
    (ties by position)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[: int(k)].astype(np.int64)


def choose_targets(
    plan: PlanConfig, config_seed: int, test_targets: np.ndarray, reference: np.ndarray
) -> np.ndarray:
    """int64[T]: the plan's explicit ``targets``, or ``count`` of the test targets whose
    ``reference`` margin is positive (correctly predicted), drawn with the config seed.
    test_targets: int[T_all] eval positions; reference: float[T_all]."""
    test_targets = np.asarray(test_targets, dtype=np.int64)
    if plan.targets is not None:
        unknown = sorted(set(plan.targets) - set(test_targets.tolist()))
        if unknown:
            raise ConfigError(
                f"plans.{plan.name}.targets: {unknown[:5]} are not test targets (eval positions "
                f"0..{len(test_targets) - 1} of the scores)"
            )
        return np.asarray(plan.targets, dtype=np.int64)
    correct = test_targets[np.asarray(reference) > 0]
    if len(correct) < int(plan.count):
        raise ConfigError(
            f"plans.{plan.name}.count={plan.count}: only {len(correct)} test targets are "
            "predicted correctly; lower the count"
        )
    rng = np.random.default_rng([config_seed, zlib.crc32(plan.name.encode()), 2])
    return np.sort(rng.permutation(correct)[: int(plan.count)])


def removal_sets(
    plan: PlanConfig,
    targets: np.ndarray,
    scores: dict[str, np.ndarray],
    reference: np.ndarray,
    n_train: int,
) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """(sets, removed): one row per mask of the plan (`plans.removal_layout`) and its removed
    train positions. scores: method -> float[T, n_train], rows in ``targets`` order;
    reference: float[T] the margin each target's flip is predicted from. A ``brittle`` set
    has k = the method's predicted smallest flipping k (`brittleness`), clipped to
    [1, ⌊brittle_max · n_train⌋]; its ``predicted_support`` is that k unclipped (inf: never)."""
    cap = max(1, int(np.floor(plan.brittle_max * n_train)))
    supports = {
        method: brittleness(values, reference).support for method, values in scores.items()
    }
    rows, removed = [], []
    for mask_index, method, number, kind, k_index in removal_layout(plan):
        if kind == "baseline":
            rows.append({"mask_index": mask_index, "method": None, "target": None, "k": 0,
                         "kind": kind, "predicted": None, "reference_margin": None,
                         "predicted_support": None})
            removed.append(np.zeros(0, dtype=np.int64))
            continue
        values = scores[method][number]
        support = float(supports[method][number])
        k = plan.ks[k_index] if kind == "grid" else int(np.clip(support, 1, cap))
        k = min(int(k), n_train)
        chosen = top_helpful(values, k)
        rows.append(
            {
                "mask_index": mask_index,
                "method": method,
                "target": int(targets[number]),
                "k": k,
                "kind": kind,
                "predicted": -float(np.asarray(values, np.float64)[chosen].sum()),
                "reference_margin": float(reference[number]),
                "predicted_support": support,
            }
        )
        removed.append(chosen)
    sets = pd.DataFrame(rows)
    sets["target"] = sets["target"].astype("Int64")  # null for the baseline row
    return sets, removed


def removal_results(
    sets: pd.DataFrame, mask_index: np.ndarray, margins: np.ndarray
) -> pd.DataFrame:
    """One row per removal set (baseline excluded): predicted vs retrained change.

    sets: the ``removals/sets.parquet`` frame; mask_index: int[m] the mask of each trained
    model of the plan; margins: float[m, n_eval] their margins. ``actual`` = mean over the
    set's seeds of the target's margin minus the baseline's mean (mask 0); ``stderr`` =
    sqrt(var_set / n_set + var_base / n_base) (NaN with one seed); ``flipped`` = the
    retrained mean margin is negative (None when the set has no trained model)."""
    mask_index = np.asarray(mask_index, dtype=np.int64)
    margins = np.asarray(margins, dtype=np.float64)
    base = margins[mask_index == 0]

    def mean_var(values: np.ndarray) -> tuple[float, float]:
        if not len(values):
            return float("nan"), float("nan")
        var = float(values.var(ddof=1)) if len(values) > 1 else float("nan")
        return float(values.mean()), var

    rows = []
    for row in sets[sets["kind"] != "baseline"].itertuples(index=False):
        target = int(row.target)
        retrained = margins[mask_index == int(row.mask_index), target]
        base_mean, base_var = mean_var(base[:, target])
        mean, var = mean_var(retrained)
        actual = mean - base_mean
        stderr = np.sqrt(var / max(len(retrained), 1) + base_var / max(len(base), 1))
        predicted = float(row.predicted)
        rows.append(
            {
                "method": row.method,
                "target": target,
                "k": int(row.k),
                "kind": row.kind,
                "predicted": predicted,
                "actual": actual if np.isfinite(actual) else None,
                "stderr": float(stderr) if np.isfinite(stderr) else None,
                "n_seeds": int(len(retrained)),
                "baseline_margin": base_mean if np.isfinite(base_mean) else None,
                "retrained_margin": mean if np.isfinite(mean) else None,
                "predicted_flipped": bool(float(row.reference_margin) + predicted < 0),
                "flipped": bool(mean < 0) if len(retrained) else None,
                "predicted_support": float(row.predicted_support),
            }
        )
    return pd.DataFrame(rows)
