"""Metrics of counterfactual removal and verified brittleness (rows of ``evaluation.parquet``).

From ``removals/results.parquet`` (`applications.removal.removal_results`), per method:

* ``removal_pearson`` / ``removal_spearman``: correlation of predicted and actual margin
  change over every retrained set (grid and brittle);
* ``removal_flip_rate_k<k>`` (actual) and ``removal_flip_rate_predicted_k<k>``: the fraction
  of targets whose prediction flips when its k most helpful points go, for each grid k;
* ``brittle_predicted_le_<p>pct`` / ``brittle_verified_le_<p>pct`` (p = 1, 5): the fraction
  of targets that flip after removing at most p% of the training set — predicted (the
  method's smallest flipping k ≤ p% · n_train) and verified (some retrained set of at most
  that size flipped it); ``brittle_confirmed``: of the brittle sets the method predicted to
  flip, the fraction that did flip when retrained.

Targets whose baseline (full-data) margin is not positive are left out of the flip rates: a
prediction that is already wrong cannot flip.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from scipy import stats

# The code version of the removal and brittleness rows of ``evaluate`` (``metric.removal``); bump
# with any change that can move a number it computes for the same inputs.
VERSION = 1


BRITTLE_FRACTIONS = (0.01, 0.05)


def _row(method: str, metric: str, value: float, n_targets: int, **details) -> dict:
    value = float(value) if value is not None and np.isfinite(value) else None
    return {"method": method, "metric": metric, "value": value, "n_targets": int(n_targets),
            "details": json.dumps(details)}


def removal_metrics(results: pd.DataFrame, n_train: int) -> list[dict]:
    """Evaluation rows (method, metric, value, n_targets, details) from the results frame."""
    rows = []
    for method, frame in results.groupby("method", sort=True):
        trained = frame[frame["actual"].notna()]
        n_targets = int(frame["target"].nunique())
        predicted = trained["predicted"].to_numpy(np.float64)
        actual = trained["actual"].to_numpy(np.float64)
        if len(trained) >= 3 and predicted.std() > 0 and actual.std() > 0:
            pearson = stats.pearsonr(predicted, actual).statistic
            spearman = stats.spearmanr(predicted, actual).statistic
        else:
            pearson = spearman = float("nan")
        slope = float(np.polyfit(predicted, actual, 1)[0]) if len(trained) >= 2 else None
        rows.append(_row(method, "removal_pearson", pearson, n_targets, n_sets=len(trained),
                         slope=slope))
        rows.append(_row(method, "removal_spearman", spearman, n_targets, n_sets=len(trained)))
        correct = trained[trained["baseline_margin"] > 0]
        grid = correct[correct["kind"] == "grid"]
        for k, at_k in grid.groupby("k", sort=True):
            flipped = at_k["flipped"].astype(bool).to_numpy()
            predicted_flip = at_k["predicted_flipped"].astype(bool).to_numpy()
            fraction = round(int(k) / n_train, 4)
            rows.append(_row(method, f"removal_flip_rate_k{int(k)}", flipped.mean(), len(at_k),
                             k=int(k), fraction_of_train=fraction,
                             predicted=float(predicted_flip.mean())))
            rows.append(_row(method, f"removal_flip_rate_predicted_k{int(k)}",
                             predicted_flip.mean(), len(at_k), k=int(k),
                             fraction_of_train=fraction))
        rows += brittle_rows(method, correct, n_train)
    return rows


def brittle_rows(method: str, correct: pd.DataFrame, n_train: int) -> list[dict]:
    """The brittleness rows of one method (``correct``: its trained sets whose target's
    baseline margin is positive)."""
    targets = np.sort(correct["target"].unique())
    if not len(targets):
        return []
    support = (
        correct.groupby("target")["predicted_support"].first().reindex(targets).to_numpy(float)
    )
    rows = []
    for fraction in BRITTLE_FRACTIONS:
        budget = np.floor(fraction * n_train)
        small = correct[correct["k"] <= budget]
        verified = small.groupby("target")["flipped"].any().reindex(targets, fill_value=False)
        pct = f"{fraction * 100:g}pct"
        rows.append(_row(method, f"brittle_predicted_le_{pct}", (support <= budget).mean(),
                         len(targets), budget=int(budget)))
        rows.append(_row(method, f"brittle_verified_le_{pct}",
                         verified.astype(bool).to_numpy().mean(), len(targets),
                         budget=int(budget), k_tried=sorted(int(k) for k in small["k"].unique())))
    predicted_to_flip = correct["predicted_support"] <= correct["k"]  # cap not binding
    brittle = correct[(correct["kind"] == "brittle") & predicted_to_flip]
    if len(brittle):
        rows.append(_row(method, "brittle_confirmed", brittle["flipped"].astype(bool).mean(),
                         len(brittle), k=sorted(int(k) for k in brittle["k"])))
    return rows
