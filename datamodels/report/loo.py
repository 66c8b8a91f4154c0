"""The report's leave-one-out section, read from ``evaluation.parquet`` only: the LOO
effects' split-half reliability (can the ground truth be trusted?) and, per method,
``loo_pearson`` / ``loo_spearman`` (does it track LOO?), best first."""

from __future__ import annotations

import html
import json
import math

import pandas as pd

from datamodels.report.notes import table

RELIABLE = 0.8  # Spearman–Brown reliability from which the LOO effects count as trustworthy
NOISE = 0.5  # below it the effects are mostly seed noise


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _number(value: float) -> str:
    return "undefined" if math.isnan(value) else f"{value:.3f}"


def verdict(reliability: float) -> str:
    """How far a Spearman–Brown reliability lets the LOO effects be trusted, in words."""
    if math.isnan(reliability):  # NaN: fewer than two seeds, or halves that disagree
        return "not measured (it needs two or more seeds whose halves agree)"
    if reliability >= RELIABLE:
        return "trustworthy: a method that tracks LOO shows it here"
    if reliability >= NOISE:
        return "moderate: differences between methods below about 0.1 are not meaningful"
    return "mostly seed noise: low agreement with LOO says little about a method"


def reliability_line(rows: pd.DataFrame) -> str:
    """The split-half sentence from the ``loo`` method's ``loo_split_half`` row."""
    half = rows[rows["metric"] == "loo_split_half"]
    if half.empty:
        return ""
    row = half.iloc[0]
    details = json.loads(row["details"])
    sb = details.get("spearman_brown", float("nan"))
    sb = float("nan") if sb is None else float(sb)
    a, b = details.get("halves", [0, 0])
    kind = "paired (one seed and batch order per replicate)" if details.get("paired") else (
        "unpaired (every model its own seed)"
    )
    r = float(row["value"])
    return _note(
        f"LOO effects of plan {details.get('plan')!r}, {kind}: split-half reliability "
        f"r = {_number(r)} (seeds split {a} / {b}), Spearman–Brown corrected to "
        f"all seeds {_number(sb)} over {details.get('n_points')} left-out points × "
        f"{int(row['n_targets'])} targets: {verdict(sb)}. A method's correlation with LOO "
        "cannot exceed about the square root of the corrected value."
    )


def loo_section(evaluation: pd.DataFrame | None, has_loo_plan: bool, run_uri: str) -> str:
    """The section's body: the reliability line and the per-method table."""
    if not has_loo_plan:
        return _note("the run has no loo or paired_loo plan")
    if evaluation is None:
        return _note("no evaluation.parquet: run evaluate")
    rows = evaluation[evaluation["metric"].str.startswith("loo_")]
    if rows.empty:
        return _note(
            "evaluation.parquet has no LOO rows: train the loo plan, then run "
            f"`datamodels evaluate {run_uri}`"
        )
    agreement = rows[rows["metric"].isin(["loo_pearson", "loo_spearman"])]
    body = reliability_line(rows)
    if agreement.empty:
        return body + _note("no other method's scores to compare with LOO")
    wide = agreement.pivot_table(index="method", columns="metric", values="value",
                                 aggfunc="first", dropna=False)
    wide = wide.reindex(columns=["loo_pearson", "loo_spearman"])
    wide = wide.sort_values("loo_pearson", ascending=False, na_position="last")
    wide.columns.name = None
    return body + table(wide.reset_index())
