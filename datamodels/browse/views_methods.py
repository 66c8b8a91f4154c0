"""The run page (``/``: what the run holds) and the methods page (``/methods``: the LDS table
with intervals, the other evaluation metrics, the LDS-against-models curve, and the test
examples on which two methods disagree most, linked)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.browse.images import curve_svg
from datamodels.browse.layout import esc, fmt, note, page, query_link, table, thumb
from datamodels.browse.reader import RunReader


def index_page(reader: RunReader) -> str:
    """``/``: the run's sizes, score tables, self scores and what else it holds."""
    run = reader.run
    n_train, n_eval = run.sizes()
    facts = pd.DataFrame(
        {
            "fact": [
                "run",
                "config hash",
                "training examples",
                "evaluated examples",
                "test examples",
                "score tables",
                "self scores",
                "removal results",
                "evaluation",
            ],
            "value": [
                run.uri,
                run.recorded_config_hash() or "?",
                n_train,
                n_eval,
                len(reader.test),
                ", ".join(reader.methods) or "none",
                ", ".join(reader.self_scores) or "none",
                "yes" if "removal_results" in reader.views else "no",
                "yes" if reader.evaluation is not None else "no",
            ],
        }
    )
    body = table(facts) + (
        '<p>Start at the <a href="/tests">test examples</a>; a test example shows what each '
        "method says it rests on, a training example whom it helps and hurts.</p>"
    )
    return page("datamodels run", body, run.uri)


def _lds_section(reader: RunReader) -> str:
    lds = reader.lds_table()
    if lds is None:
        return note("no evaluation.parquet: run `datamodels evaluate`")
    if lds.empty:
        return note("evaluation.parquet has no LDS rows (the evaluate plan has no models)")
    return table(lds.sort_values("lds", ascending=False)) + note(
        "low / high: lds ± 1.96 standard errors over targets (evaluation.parquet details)"
    )


def _other_metrics(reader: RunReader) -> str:
    evaluation = reader.evaluation
    if evaluation is None:
        return ""
    rows = evaluation[evaluation["metric"] != "lds"]
    if rows.empty:
        return ""
    pivot = rows.pivot_table(index="metric", columns="method", values="value", aggfunc="first")
    pivot.columns.name = None
    return "<h2>Other metrics</h2>" + table(pivot.reset_index())


def _curve_section(reader: RunReader) -> str:
    curve = reader.lds_curve
    if curve is None:
        return note("no applications/lds_curve.parquet: run `datamodels lds-curve RUN`")
    if reader.lds_curve_state != "done":
        return (
            '<div id="lds-curve-stale">'
            + note(
                f"applications/lds_curve.parquet is {reader.lds_curve_state}: the models or fit "
                "settings it was made from have changed since, so the curve is not shown; run "
                f"`datamodels lds-curve {reader.run.uri}` to redo it"
            )
            + "</div>"
        )
    x_column = "n_models" if "n_models" in curve else curve.columns[1]
    y_column = "lds" if "lds" in curve else curve.columns[-1]
    series = {"datamodels": (curve[x_column].to_numpy(float), curve[y_column].to_numpy(float))}
    return curve_svg(series) + table(curve)


def _disagreement(reader: RunReader, params: dict[str, str], n: int) -> str:
    methods = reader.methods
    if len(methods) < 2:
        return note("fewer than two score tables: nothing to compare")
    a = params.get("a") if params.get("a") in methods else methods[0]
    b = (
        params.get("b")
        if params.get("b") in methods and params.get("b") != a
        else next(m for m in methods if m != a)
    )
    choose = "".join(
        f'<a href="{esc(query_link("/methods", {"a": x, "b": y}))}">{esc(x)} vs {esc(y)}</a> '
        for i, x in enumerate(methods)
        for y in methods[i + 1 :]
    )
    if reader.index_note():
        return note(reader.index_note())
    rho = reader.disagreement(a, b).dropna().sort_values(kind="stable")
    inputs = reader.inputs("test")
    cells = [
        thumb("test", int(t), inputs[int(reader.test.at[int(t), "row"])], f"#{t} ρ={value:.2f}")
        for t, value in rho.iloc[:n].items()
    ]
    mean = float(np.mean(rho)) if len(rho) else float("nan")
    return (
        f"<p>pairs: {choose}</p><p>{esc(a)} vs {esc(b)}: the {len(cells)} test examples whose "
        f"score rows the two rank least alike (Spearman ρ over training points; mean over "
        f"{len(rho)} targets {fmt(mean)})</p>"
        f'<div class="grid" id="disagree">{"".join(cells)}</div>'
    )


def methods_page(reader: RunReader, params: dict[str, str], n: int = 12) -> str:
    body = (
        "<h2>Linear datamodeling score</h2>"
        + _lds_section(reader)
        + _other_metrics(reader)
        + "<h2>LDS against the number of models</h2>"
        + _curve_section(reader)
        + "<h2>Where two methods disagree most</h2>"
        + _disagreement(reader, params, n)
    )
    return page("Methods", body, reader.run.uri)
