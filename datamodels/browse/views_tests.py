"""The test-example pages: the filterable, sortable grid (``/tests``) and one test example
(``/test/<target>``): its margin, each method's most helpful and harmful training examples
side by side, the methods' agreement, its counterfactual removals, its weights' histogram."""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.browse.images import histogram_svg
from datamodels.browse.layout import esc, fmt, note, page, query_link, table, thumb
from datamodels.browse.reader import RunReader

PAGE_SIZE = 200
SORTS = {
    "target": "test id (eval position)",
    "margin": "mean margin over the fitting plan's models",
    "predicted": "datamodel margin b + Σw",
    "lds": "LDS of the target (default method)",
    "brittleness": "predicted removals to flip (datamodels)",
}


def _int(value: str | None) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        number = None if value in (None, "") else float(value)
    except ValueError:
        return None
    return None if number is None or np.isnan(number) else number


def _shown(value: float | None) -> str:
    return "" if value is None else esc(f"{value:g}")


def metrics_frame(reader: RunReader, columns: set[str]) -> pd.DataFrame:
    """Per test target: label, margin, correct, and each asked column of `SORTS` there is."""
    frame = reader.test[["label", "original_label"]].copy()
    frame["margin"] = reader.margins
    frame["correct"] = frame["margin"] > 0
    if "predicted" in columns and reader.predicted_margins is not None:
        frame["predicted"] = reader.predicted_margins
    if "lds" in columns and reader.default_method is not None:
        lds = reader.target_lds(reader.default_method)
        if lds is not None:
            frame["lds"] = lds
    if "brittleness" in columns:
        support = reader.brittleness()
        if support is not None:
            frame["brittleness"] = support
    return frame


def grid_page(reader: RunReader, params: dict[str, str]) -> str:
    """``/tests?label=&correct=yes|no&brittle=K&lds_min=&lds_max=&sort=&order=asc|desc&page=``
    (``lds_min`` / ``lds_max``: the target's LDS by the default method, bounds included)."""
    label, brittle = _int(params.get("label")), _int(params.get("brittle"))
    correct = params.get("correct", "")
    sort = params.get("sort", "target") if params.get("sort") in SORTS else "target"
    order = "desc" if params.get("order") == "desc" else "asc"
    number = max(_int(params.get("page")) or 0, 0)
    lds_min, lds_max = _float(params.get("lds_min")), _float(params.get("lds_max"))
    by_lds = lds_min is not None or lds_max is not None
    asked = {sort, "brittleness" if brittle is not None else "", "lds" if by_lds else ""}
    frame = metrics_frame(reader, asked)
    shown = frame
    if label is not None:
        shown = shown[shown["label"] == label]
    if correct in ("yes", "no"):
        shown = shown[shown["correct"] == (correct == "yes")]
    if brittle is not None and "brittleness" in shown:
        shown = shown[shown["brittleness"] <= brittle]
    if by_lds and "lds" in shown:
        values = shown["lds"]
        keep = values.notna()
        if lds_min is not None:
            keep &= values >= lds_min
        if lds_max is not None:
            keep &= values <= lds_max
        shown = shown[keep]
    key = sort if sort in shown else "target"
    shown = (
        shown.sort_index(ascending=order == "asc")
        if key == "target"
        else shown.sort_values(key, ascending=order == "asc", na_position="last", kind="stable")
    )
    total = len(shown)
    shown = shown.iloc[number * PAGE_SIZE : (number + 1) * PAGE_SIZE]
    inputs = reader.inputs("test")
    cells = []
    for target, row in shown.iterrows():
        value = f" {key} {fmt(row[key])}" if key not in ("target",) else ""
        cells.append(
            thumb(
                "test",
                int(target),
                inputs[int(reader.test.at[target, "row"])],
                f"#{target} y={row['label']}{value}",
                "right" if row["correct"] else "wrong",
                " · ".join(
                    filter(None, [f"margin {fmt(row['margin'])}", reader.source_of("test", target)])
                ),
            )
        )
    labels = sorted(int(v) for v in reader.test["label"].unique())
    options = "".join(
        f'<option value="{v}"{" selected" if v == label else ""}>{v}</option>' for v in labels
    )
    sorts = "".join(
        f'<option value="{k}"{" selected" if k == sort else ""}>{esc(t)}</option>'
        for k, t in SORTS.items()
    )
    form = (
        '<form method="get" action="/tests">'
        f'<label>class <select name="label"><option value="">all</option>{options}</select>'
        "</label>"
        '<label>prediction <select name="correct"><option value="">all</option>'
        f'<option value="yes"{" selected" if correct == "yes" else ""}>correct</option>'
        f'<option value="no"{" selected" if correct == "no" else ""}>incorrect</option>'
        "</select></label>"
        f'<label>brittle ≤ <input name="brittle" size="4" value="{brittle if brittle else ""}">'
        "</label>"
        f'<label>LDS from <input name="lds_min" size="5" value="{_shown(lds_min)}"></label>'
        f'<label>to <input name="lds_max" size="5" value="{_shown(lds_max)}"></label>'
        f'<label>sort by <select name="sort">{sorts}</select></label>'
        f'<label><select name="order"><option value="asc">ascending</option>'
        f'<option value="desc"{" selected" if order == "desc" else ""}>descending</option>'
        '</select></label><button type="submit">show</button></form>'
    )
    pager = []
    base = {
        "label": label,
        "correct": correct,
        "brittle": brittle,
        "lds_min": lds_min,
        "lds_max": lds_max,
        "sort": sort,
        "order": order,
    }
    if number > 0:
        pager.append(
            f'<a href="{esc(query_link("/tests", base | {"page": number - 1}))}">previous</a>'
        )
    if (number + 1) * PAGE_SIZE < total:
        pager.append(f'<a href="{esc(query_link("/tests", base | {"page": number + 1}))}">next</a>')
    missing = note(f"this run has no {SORTS[sort]}; sorted by test id") if key != sort else ""
    if by_lds and "lds" not in frame:
        missing += note("this run has no per-target LDS (evaluate plan, scores): not filtered")
    if (key != sort or (by_lds and "lds" not in frame)) and reader.index_note():
        missing += note(reader.index_note())
    body = (
        form + missing + f'<p id="count">{total} of {len(frame)} test examples '
        f"(border: green = correct, red = wrong by the mean margin)</p>"
        + f'<div class="grid" id="grid">{"".join(cells)}</div><p>{" ".join(pager)}</p>'
    )
    return page("Test examples", body, reader.run.uri)


def agreement(reader: RunReader, target: int, tops: dict[str, np.ndarray], k: int) -> pd.DataFrame:
    """Per pair of methods: the share of their top-``k`` helpful training points in common
    (``tops``: method -> its top-k train positions) and the Spearman correlation of their
    score rows of ``target``."""
    names = list(tops)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = set(tops[a][:k].tolist()) & set(tops[b][:k].tolist())
            out.append(
                {
                    "method a": a,
                    "method b": b,
                    f"top-{k} overlap": len(common) / k,
                    "rank correlation": reader.rank_correlation(a, b, target),
                }
            )
    return pd.DataFrame(out)


def _method_column(reader: RunReader, method: str, ranked: dict[str, tuple]) -> str:
    inputs, train = reader.inputs("train"), reader.train
    parts = []
    for name, sign in (("helpful", "≤"), ("harmful", "≥")):
        positions, scores = ranked[name]
        keep = scores > 0 if name == "helpful" else scores < 0
        cells = [
            thumb(
                "train",
                int(i),
                None if inputs is None else inputs[int(i)],
                f"#{i} y={train.at[int(i), 'label']} {score:+.3g}",
                "flipped" if train.at[int(i), "flipped"] else "",
                reader.source_of("train", int(i)),
            )
            for i, score in zip(positions[keep], scores[keep], strict=True)
        ]
        shown = "".join(cells) or note(f"no {name} training example (every score {sign} 0)")
        parts.append(f'<h4>{name}</h4><div class="row {name}">{shown}</div>')
    return (
        f'<div class="method" data-method="{esc(method)}"><h3>{esc(method)}</h3>'
        f"{''.join(parts)}</div>"
    )


def test_page(reader: RunReader, target: int, k: int) -> str:
    """``/test/<target>``: one test example and what every method says it rests on."""
    row = reader.test_row(target)
    inputs = reader.inputs("test")
    predicted = reader.predicted_margins
    facts = pd.DataFrame(
        [
            ("label", row["label"]),
            ("original label", row["original_label"]),
            *reader.source_facts("test", target),
            (f"mean margin ({reader.n_margin_models} models)", reader.margins.get(target)),
            ("datamodel margin b + Σw", None if predicted is None else predicted.get(target)),
        ],
        columns=["fact", "value"],
    )
    picture = thumb(
        "test",
        target,
        inputs[int(row["row"])],
        f"test #{target}",
        "",
        reader.source_of("test", target),
    )
    rows = {m: r for m in reader.methods if (r := reader.ranked_train(m, target, k)) is not None}
    columns = "".join(_method_column(reader, m, r) for m, r in rows.items())
    body = (
        f'<div class="big">{picture}</div>{table(facts)}'
        f"<h2>Top {k} helpful and harmful training examples, by method</h2>"
        '<p class="note">score: the change in this example\'s margin the method attributes to '
        "including the training example; red: its label was flipped</p>"
        + (
            f'<div class="methods">{columns}</div>'
            if rows
            else note("no scores/*.parquet has a row for this target: run fit or estimate")
        )
    )
    body += "<h2>Agreement between methods</h2>" + (
        table(agreement(reader, target, {m: r["helpful"][0] for m, r in rows.items()}, k))
        if len(rows) > 1
        else note("fewer than two methods score it")
    )
    removal = reader.removal_of(target)
    body += "<h2>Counterfactual removal</h2>" + (
        note("no removals/results.parquet: add a removal plan and run `datamodels removal`")
        if removal is None
        else table(removal)
        if len(removal)
        else note("the removal plan did not choose this target")
    )
    weights = reader.weights_of(target)
    body += f"<h2>Datamodel weights ({len(weights)} nonzero)</h2>" + histogram_svg(weights)
    return page(f"Test example {target}", body, reader.run.uri)
