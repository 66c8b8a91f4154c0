"""`build_report`: one self-contained HTML page about a run, from its public tables only.

Sections (each always present, with a note when the run has nothing for it): run facts, LDS
per method, mislabel detection, target supports (a target beside its most helpful and most
harmful training inputs), datamodel embedding, leakage candidates, brittleness, LOO
agreement, counterfactual removal and brittleness verified by retraining (from
``removals/results.parquet``), sparse decision layer, LDS against the number of models, the
effect of subset size α. Figures are inline base64 PNGs; the page fetches nothing.

The report only reads: a table a stage has not written, or wrote from inputs that changed
since (its marker's digest no longer matches), gets a note naming the command that makes it
(``datamodels lds-curve RUN``, ``datamodels alpha-effect RUN``); nothing is fitted here.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from datamodels.applications import (
    brittleness_from_run,
    embedding_from_run,
    extremes,
    leakage_from_run,
    loo_agreement_from_run,
    split_scores,
)
from datamodels.applications.alpha_effect import alpha_effect_summary
from datamodels.applications.tables import test_input_rows
from datamodels.config import config_from_yaml_text
from datamodels.errors import DatamodelsError
from datamodels.report import notes, plots
from datamodels.report.notes import table as _table
from datamodels.report.sparse import sparse_layer_section
from datamodels.report.support import STYLE as SUPPORT_STYLE
from datamodels.report.support import support_section
from datamodels.stages.alpha_effect import AlphaEffectStage
from datamodels.stages.base import Stage
from datamodels.stages.fit import shortfall_line
from datamodels.stages.lds_curve import LdsCurveStage
from datamodels.stages.states import DONE, make_command, stage_state
from datamodels.store import Run

SECTIONS = (
    ("facts", "Run"),
    ("lds", "Linear datamodeling score"),
    ("mislabel", "Mislabel detection"),
    ("support", "What each prediction rests on"),
    ("embedding", "Datamodel embedding"),
    ("leakage", "Leakage candidates"),
    ("brittleness", "Brittleness (predicted)"),
    ("loo", "Agreement with leave-one-out"),
    ("counterfactual", "Counterfactual removal: predicted vs retrained"),
    ("brittleness_verified", "Brittleness verified by retraining"),
    ("sparse_layer", "Sparse decision layer"),
    ("lds_curve", "LDS against number of models"),
    ("alpha", "Effect of subset size α"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
section { border-top: 1px solid #ddd; padding: 0.5em 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #666; font-style: italic; }
.read { color: #444; font-size: 0.92em; background: #f6f6f6; padding: 4px 8px; }
""" + SUPPORT_STYLE


def _img(png: str | None, alt: str) -> str:
    if png is None:
        return f'<p class="note">no data for {html.escape(alt)}</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _facts(run: Run) -> str:
    models = run.models(columns=["plan", "seconds"]).to_pandas()
    per_plan = models.groupby("plan").agg(models=("seconds", "size"), seconds=("seconds", "sum"))
    failures = run.failures()
    failed = (
        failures.groupby("plan")["model_id"].nunique()
        if len(failures)
        else pd.Series(dtype="int64")
    )
    per_plan["failed_models"] = failed.reindex(per_plan.index).fillna(0).astype(int)
    n_train, n_eval = run.sizes()
    facts = pd.DataFrame(
        {
            "fact": [
                "run",
                "config hash",
                "training examples",
                "evaluated examples",
                "models",
                "training time (s, summed)",
                "score tables",
            ],
            "value": [
                run.uri,
                run.recorded_config_hash() or "?",
                n_train,
                n_eval,
                len(models),
                f"{models['seconds'].sum():.1f}",
                ", ".join(run.score_methods()) or "none",
            ],
        }
    )
    short = shortfall_line(run)
    return _table(facts) + _table(per_plan.reset_index()) + (_note(short) if short else "")


def _evaluation(run: Run) -> pd.DataFrame | None:
    try:
        return run.evaluation()
    except DatamodelsError:
        return None


def _embedding(run: Run, method: str, k: int) -> str:
    embedding = embedding_from_run(run, method, n_components=2)
    rows_in_test = test_input_rows(run, embedding.targets)
    test_x, test_y = run.inputs("test")[rows_in_test], run.labels("test")[rows_in_test]
    body = _img(
        plots.embedding_figure(embedding.coordinates, test_y, embedding.explained),
        "embedding scatter",
    )
    rows = []
    for component, (low, high) in enumerate(extremes(embedding.coordinates, k)):
        rows.append((f"PC {component + 1} low", [test_x[i] for i in low]))
        rows.append((f"PC {component + 1} high", [test_x[i] for i in high]))
    return body + _img(plots.extremes_figure(rows), "embedding extremes")


def _leakage(run: Run, method: str, k: int) -> str:
    ranked = leakage_from_run(run, method, k=k)
    test_x, train_x = run.inputs("test"), run.inputs("train")
    test_targets = split_scores(run, method).test_targets
    test_row = dict(zip(test_targets.tolist(), test_input_rows(run, test_targets), strict=True))
    body = []
    for name, column in (("cosine", "cosine"), ("weight", "weight")):
        pairs = ranked[name]
        if pairs.empty:
            body.append(
                _note(
                    f"no {name} ranking: the run has no datamodels of the train split; fit "
                    "them with --set fit.targets=all (needs dataset.eval_train)"
                )
            )
            continue
        images = [
            (
                test_x[test_row[int(p.target)]],
                train_x[int(p.train_position)],
                f"{column} {getattr(p, column):.3f}",
            )
            for p in pairs.head(8).itertuples()
        ]
        body.append(
            f"<h3>by {name}</h3>"
            + _img(plots.pairs_figure(images), f"leakage {name}")
            + _table(pairs)
        )
    return "".join(body)


def _brittleness(run: Run) -> str:
    result = brittleness_from_run(run)
    correct = int((result.predicted_margin > 0).sum())
    summary = pd.DataFrame(
        {
            "removed at most": ["1% of train", "5% of train"],
            "fraction of correct test predictions that flip": [
                result.fraction_flipped(0.01),
                result.fraction_flipped(0.05),
            ],
            "correct test predictions": [correct, correct],
        }
    )
    return (
        _img(plots.brittleness_figure(result.support, result.n_train), "brittleness")
        + _table(summary)
        + _note(
            "predicted by the datamodels (margin − the k largest helpful weights < 0); "
            "not verified by retraining"
        )
    )


def _removal_results(run: Run) -> pd.DataFrame | None:
    try:
        return run.removal_results()
    except DatamodelsError:
        return None


_NO_REMOVAL = (
    "no removals/results.parquet: add a removal plan to the config and run "
    "`datamodels removal RUN`"
)


def _by_method(rows: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows as one line per metric, one column per method."""
    table = rows.pivot(index="metric", columns="method", values="value")
    table.columns.name = None
    return table.reset_index()


def _counterfactual(run: Run, evaluation: pd.DataFrame | None) -> str:
    """Predicted vs retrained margin change of every removal set, and the metrics per
    method (correlations, flip rates per k)."""
    results = _removal_results(run)
    if results is None:
        return _note(_NO_REMOVAL)
    body = _img(plots.removal_figure(results), "counterfactual removal scatter")
    if evaluation is not None:
        rows = evaluation[evaluation["metric"].str.startswith("removal_")]
        if len(rows):
            body += _table(_by_method(rows))
    return body + _note(
        "each point: one target and the k training points its scores rank most helpful, "
        "removed and retrained (mean over seeds) against the change the scores predict"
    )


def _brittleness_verified(run: Run, evaluation: pd.DataFrame | None) -> str:
    """The predicted smallest flipping k per target, checked by retraining; the fractions
    of predictions that flip after removing at most 1% / 5% of the training set."""
    results = _removal_results(run)
    if results is None:
        return _note(_NO_REMOVAL)
    body = _img(plots.verified_brittleness_figure(results, run.n_train), "verified brittleness")
    if evaluation is not None:
        rows = evaluation[evaluation["metric"].str.startswith("brittle_")]
        if len(rows):
            body += _table(
                _by_method(rows),
                "no value: no target of this method had a predicted flip within the removal "
                "plan's largest k, so there was nothing to confirm by retraining",
            )
    return body


def _derived(run: Run, stage_class: type[Stage], what: str) -> tuple[pd.DataFrame | None, str]:
    """(the table a derived stage wrote, "") when it is current; else (None, a note naming
    the command that makes it). The report reads it as it is; it never computes it."""
    stage = stage_class.as_recorded(config_from_yaml_text(run.read_config_text()), run)
    path = stage.outputs()[0]
    state = stage_state(stage)
    if state != DONE:
        return None, f"{what}: {path} is {state}; run {make_command(stage)}"
    return stage.up_to_date(), ""


def _lds_curve(run: Run, evaluation: pd.DataFrame | None) -> str:
    curve, absent = _derived(run, LdsCurveStage, "LDS against number of models")
    if curve is None:
        return _note(absent)
    return (
        _img(plots.lds_curve_figure(curve, evaluation), "LDS against number of models")
        + _table(curve)
        + _note(
            f"datamodels fitted on the first m models of the fitting plan (same λ rule as "
            f"`fit`), LDS on the held-out plan '{curve['plan'].iloc[0]}'; dashed lines: the "
            "other methods' LDS from evaluation.parquet"
        )
    )


def _alpha_effect(run: Run) -> str:
    frame, absent = _derived(run, AlphaEffectStage, "alpha effect")
    if frame is None:
        return _note(absent)
    summary = alpha_effect_summary(frame)
    k, reference = int(summary["k"].iloc[0]), str(summary["reference"].iloc[0])
    return (
        _img(plots.alpha_effect_figure(summary), "effect of subset size")
        + _table(summary.drop(columns=["k", "reference", "l1", "n_targets"]))
        + _note(
            f"per α level, datamodels fitted on {int(summary['n_models'].iloc[0])} models; "
            f"lds_level on {int(summary['n_heldout'].iloc[0])} other models of the same level, "
            f"lds_eval on the evaluation plan; top_overlap: share of the top-{k} helpful "
            f"training examples of the reference ({reference}) also in this level's top-{k}"
        )
    )


def build_report(
    run: Run | str, out: str | Path | None = None, n_targets: int = 3, k: int = 6
) -> Path:
    """Write the report of ``run`` to ``out`` (default ``<run>/report.html`` for a local
    run, else ``report.html``) and return its path."""
    run = run if isinstance(run, Run) else Run(run)
    if out is None:
        local = run.local_path("report.html")
        out = local if local is not None else "report.html"
    evaluation = _evaluation(run)
    methods = run.score_methods()
    method = "datamodels" if "datamodels" in methods else None
    bodies: dict[str, str] = {"facts": _facts(run)}
    if evaluation is None:
        bodies["lds"] = bodies["mislabel"] = _note("no evaluation.parquet: run evaluate")
    else:
        lds_rows = evaluation[evaluation["metric"] == "lds"]
        bodies["lds"] = _img(plots.lds_figure(evaluation), "LDS per method") + (
            _table(lds_rows[["method", "value", "n_targets"]]) + notes.lds_line(run, lds_rows)
            if len(lds_rows)
            else ""
        )
        mislabel = plots.mislabel_figure(evaluation)
        bodies["mislabel"] = (
            _img(mislabel, "mislabel detection")
            if mislabel
            else _note("no labels were flipped in this run (dataset.flip_fraction)")
        )
    if method is None:
        for name in ("support", "embedding", "leakage", "brittleness"):
            bodies[name] = _note("no scores/datamodels.parquet: run `datamodels fit`")
        if methods and not run.fs.isfile("transfer/source_classes.parquet"):
            # attributed or estimated models only: the top training examples of each method
            bodies["support"] = "".join(
                f"<h3>{html.escape(m)}</h3>" + support_section(run, m, n_targets, k)
                for m in methods
            )
    else:
        # a transfer run's training points are source classes, not inputs to draw
        transfer = run.fs.isfile("transfer/source_classes.parquet")
        note = _note(
            "a transfer run: its training points are source classes; see "
            f"`datamodels transfer-report {run.uri}`"
        )
        bodies["support"] = note if transfer else support_section(run, method, n_targets, k)
        bodies["embedding"] = _embedding(run, method, k)
        bodies["leakage"] = note if transfer else _leakage(run, method, k=12)
        bodies["brittleness"] = _brittleness(run)
    bodies["counterfactual"] = _counterfactual(run, evaluation)
    bodies["brittleness_verified"] = _brittleness_verified(run, evaluation)
    agreement = loo_agreement_from_run(run) if methods else None
    bodies["loo"] = (
        _note("the run has no loo plan")
        if agreement is None
        else _table(agreement) + _note(notes.LOO_CAVEAT)
    )
    bodies["sparse_layer"] = sparse_layer_section(run)
    bodies["lds_curve"] = _lds_curve(run, evaluation)
    bodies["alpha"] = _alpha_effect(run)
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{notes.how_to_read(key)}'
        f"{bodies[key]}</section>"
        for key, title in SECTIONS
    )
    return write_page(f"datamodels report: {html.escape(run.uri)}", sections, out)


def write_page(title: str, body: str, out: str | Path) -> Path:
    """One self-contained page (``title`` already escaped, ``body`` HTML) written atomically
    to ``out``; returns its path."""
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<link rel="icon" href="data:,"><style>{_STYLE}</style></head>'
        f"<body><h1>{title}</h1>{body}</body></html>"
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_suffix(out.suffix + ".tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(out)
    return out
