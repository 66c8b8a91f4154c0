"""Agreement with actual leave-one-out retraining, where the run has a ``loo`` plan.

LOO(i, t) comes from the first ``paired_loo`` or ``loo`` plan's models
(`datamodels.estimators.paired_loo`: the mean paired difference; `datamodels.estimators.loo`:
full models minus models without i). For each method, on the (target, left-out point) pairs the plan
covers: Pearson and Spearman correlation of the method's scores with LOO over all pairs, and
the mean per-target Spearman. Scale does not matter (datamodel weights and LOO effects
differ by the subset size), only agreement.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from datamodels.config import config_from_yaml_text
from datamodels.estimators.loo import left_out_points, loo, paired_loo, replicate_keys
from datamodels.plans import plan_models
from datamodels.store import Run


def _correlation(x: np.ndarray, y: np.ndarray, rank: bool) -> float:
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y)[0] if rank else np.corrcoef(x, y)[0, 1])


def loo_agreement(
    scores: dict[str, np.ndarray], loo_values: np.ndarray, points: np.ndarray
) -> pd.DataFrame:
    """Per method: pearson, spearman (all pairs) and mean per-target spearman vs LOO.

    scores: method -> float[T, n_train] (same targets and order as loo_values);
    loo_values: float[T, n_train]; points: int[p] the left-out train positions compared.
    """
    points = np.asarray(points, dtype=np.int64)
    truth = np.asarray(loo_values, dtype=np.float64)[:, points]
    rows = []
    for method, values in sorted(scores.items()):
        mine = np.asarray(values, dtype=np.float64)[:, points]
        per_target = [_correlation(a, b, rank=True) for a, b in zip(mine, truth, strict=True)]
        finite = [v for v in per_target if np.isfinite(v)]
        rows.append(
            {
                "method": method,
                "pearson": _correlation(mine.ravel(), truth.ravel(), rank=False),
                "spearman": _correlation(mine.ravel(), truth.ravel(), rank=True),
                "mean_target_spearman": float(np.mean(finite)) if finite else float("nan"),
                "n_targets": int(len(truth)),
                "n_points": int(len(points)),
            }
        )
    return pd.DataFrame(rows)


def loo_effects_from_run(run: Run, plan: str | None = None):
    """(targets int[n_eval], loo float[n_eval, n_train], points int[p]) from the run's first
    ``loo``-kind plan (or ``plan``); None when the run has no such models."""
    tree = yaml.safe_load(run.read_config_text()) or {}
    kinds = {p["name"]: p.get("kind") for p in tree.get("plans", [])}
    if plan is None:
        names = [name for name, kind in kinds.items() if kind in ("paired_loo", "loo")]
        if not names:
            return None
        plan = names[0]
    masks, margins = run.masks_and_margins(plan=plan)
    if len(masks) == 0 or not masks.all(1).any():
        return None
    left_out = left_out_points(masks)
    if kinds.get(plan) == "paired_loo":  # the mean paired difference (estimators.paired_loo)
        config = config_from_yaml_text(run.read_config_text())
        ids = run.model_ids(plan)
        mask_index = plan_models(config, masks.shape[1]).select_ids(ids).mask_index
        keys = replicate_keys(ids, mask_index, config.plan(plan).seeds)
        result = paired_loo(left_out, keys, margins, masks.shape[1])
    else:
        result = loo(left_out, margins, masks.shape[1])
    points = np.unique(left_out[left_out >= 0])
    return np.arange(margins.shape[1]), result.values, points


def loo_agreement_from_run(run: Run, plan: str | None = None) -> pd.DataFrame | None:
    """`loo_agreement` of every score table except LOO's own; None without a loo plan."""
    effects = loo_effects_from_run(run, plan)
    if effects is None:
        return None
    eval_targets, values, points = effects
    scores = {}
    for method in run.score_methods():
        if method == "loo":
            continue
        targets, method_scores = run.scores(method)
        scores[method] = (targets, method_scores)
    common = set(eval_targets.tolist())
    for targets, _ in scores.values():
        common &= set(targets.tolist())
    common_targets = np.array(sorted(common), dtype=np.int64)
    aligned = {method: s[np.searchsorted(t, common_targets)] for method, (t, s) in scores.items()}
    return loo_agreement(aligned, values[common_targets], points)
