"""The report's words: a "how to read this" note per section, the line under the LDS table
(what the targets are, which methods are equal by construction), and tables whose missing
values read "—" with a footnote instead of NaN."""

from __future__ import annotations

import html
from itertools import combinations

import numpy as np
import pandas as pd

from datamodels.errors import DatamodelsError
from datamodels.store import Run

HOW_TO_READ = {
    "facts": "What was run: the models trained per plan, their summed training time and the "
    "score tables the run holds. Any fit targets that stopped short of the solver's "
    "tolerance are counted here.",
    "lds": "Linear datamodeling score: for each test target, the Spearman correlation between "
    "the margins the scores predict for the held-out subsets (sum of the scores of the "
    "subset's members) and the margins the retrained models gave; the bar is its mean over "
    "targets. 1 is a perfect ranking of subsets, 0 none.",
    "mislabel": "Training examples ranked by their self-score, lowest first: the curve is the "
    "share of flipped labels found after inspecting that share of the training set. Above "
    "the dashed diagonal is better than chance.",
    "support": "Each target (left) with the training inputs whose presence most raises its "
    "margin (helpful, top row, w > 0) and most lowers it (harmful, bottom row, w < 0); "
    "y is the training label, w the datamodel weight.",
    "embedding": "Each test target placed by the first two principal components of its "
    "datamodel weights: targets that rest on the same training examples sit together.",
    "leakage": "Test–train pairs a weight (or weight-vector cosine) ties closely: near "
    "duplicates across the split show up here first.",
    "brittleness": "How many of its most helpful training points must go before a correct "
    "test prediction flips, as the datamodels predict it (not retrained).",
    "loo": "How well each method's scores agree with leave-one-out retraining: Pearson and "
    "Spearman correlation with the LOO effects over every (left-out point, test target) "
    "pair, best first. The line above the table says whether those effects can be trusted: "
    "the correlation of the effects from two disjoint halves of the seeds.",
    "counterfactual": "Each point: one removal set, predicted margin change (x) against the "
    "change retraining without it gave (y). Points on the dashed diagonal are predicted "
    "exactly; a method can rank well (high Pearson) on a scale that is not a margin change "
    "(slope far from 1): each panel's x axis is scaled to its own method.",
    "brittleness_verified": "The predicted smallest number of helpful points whose removal "
    "flips a prediction, checked by retraining without them.",
    "sparse_layer": "A sparse linear decision layer over the datamodel embedding: accuracy "
    "against the number of features it keeps.",
    "lds_curve": "How the datamodels' LDS grows with the number of models they are fitted "
    "on; dashed lines are the other methods' LDS for comparison.",
    "alpha": "Datamodels fitted on subsets of each size α: their LDS, and how much their "
    "most helpful training examples agree with the reference level's.",
}

MISSING = "—"


def how_to_read(key: str) -> str:
    """The section's note, as a paragraph (empty when it has none)."""
    text = HOW_TO_READ.get(key)
    return f'<p class="read">How to read this: {html.escape(text)}</p>' if text else ""


def table(frame: pd.DataFrame, why_missing: str | None = None) -> str:
    """``frame`` as HTML; a missing value shows as "—" and, when there is one, a footnote
    says why (``why_missing``, or a generic reason)."""
    body = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0,
                         na_rep=MISSING)
    if frame.isna().to_numpy().any():
        reason = why_missing or "no value: the metric is undefined for this method here"
        body += f'<p class="note">{MISSING} {html.escape(reason)}</p>'
    return body


def equal_methods(run: Run) -> list[tuple[str, str]]:
    """Pairs of score tables that are identical (same targets, same scores): methods that
    are equal by construction on this run, detected, not assumed."""
    tables = {}
    for method in run.score_methods():
        try:
            ids, scores = run.scores(method)
        except DatamodelsError:
            continue
        tables[method] = (np.asarray(ids), np.asarray(scores))
    return [
        (a, b)
        for a, b in combinations(sorted(tables), 2)
        if np.array_equal(tables[a][0], tables[b][0])
        and tables[a][1].shape == tables[b][1].shape
        and np.allclose(tables[a][1], tables[b][1], rtol=1e-6, atol=0)
    ]


def lds_line(run: Run, lds_rows: pd.DataFrame) -> str:
    """What the LDS targets are, and which methods are equal by construction."""
    n_train, n_eval = run.sizes()
    counts = sorted(set(int(n) for n in lds_rows["n_targets"]))
    text = (
        f"LDS is computed over the test targets only (n_targets: {', '.join(map(str, counts))};"
        " a target whose margins or predictions do not vary over the held-out models has no "
        "rank correlation and is left out)."
    )
    if counts and n_eval > max(counts):
        text += (
            f" The {n_eval} evaluated examples of the run facts also include training "
            "examples (evaluated for self-scores and mislabel detection): a model's margin on "
            "a point it may have trained on is no test of prediction."
        )
    pairs = equal_methods(run)
    if pairs:
        named = "; ".join(f"{a} = {b}" for a, b in pairs)
        text += (
            f" Identical score tables: {named}. They are equal by construction here (e.g. "
            "banzhaf and downsampling coincide when subsets are drawn at α = ½), so their "
            "rows match in every table."
        )
    return f'<p class="note">{html.escape(text)}</p>'
