"""The training-example pages: one training example (``/train/<position>``: the test examples
it helps and hurts most by each method, its self-influence, its label and whether it was
flipped), the mislabel candidates (``/mislabel``) and the leakage pairs (``/leakage``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.browse.layout import esc, fmt, note, page, query_link, table, thumb
from datamodels.browse.reader import RunReader


def _name(reader: RunReader, position: int) -> str:
    classes = reader.source_classes
    if classes is None:
        return f"training example {position}"
    names = dict(zip(classes["train_position"], classes["name"], strict=True))
    return f"source class {names.get(position, position)}"


def _test_cells(reader: RunReader, column: pd.Series) -> str:
    inputs = reader.inputs("test")
    cells = []
    for target, score in column.items():
        row = reader.test.loc[int(target)]
        cells.append(
            thumb(
                "test",
                int(target),
                inputs[int(row["row"])],
                f"#{target} y={row['label']} {score:+.3g}",
                "",
                reader.source_of("test", int(target)),
            )
        )
    return "".join(cells)


def train_page(reader: RunReader, position: int, k: int) -> str:
    """``/train/<position>``: whom one training example helps and hurts, by method."""
    row = reader.train_row(position)
    inputs = reader.inputs("train")
    flipped = bool(row["flipped"])
    facts = [
        ("label (trained on)", row["label"]),
        ("original label", row["original_label"]),
        ("label flipped", "yes" if flipped else "no"),
        *reader.source_facts("train", position),
    ]
    for method, values in reader.self_scores.items():
        rank = int((values > values[position]).sum())
        facts.append(
            (f"self score ({method})", f"{values[position]:.4g} (rank {rank + 1} of {len(values)})")
        )
    picture = thumb(
        "train",
        position,
        None if inputs is None else inputs[position],
        _name(reader, position),
        "flipped" if flipped else "",
        reader.source_of("train", position),
    )
    columns = []
    for method in reader.methods:
        ranked = reader.ranked_tests(method, position, k)
        if ranked is None:
            continue
        helps, hurts = ranked["helps"], ranked["hurts"]
        helps, hurts = helps[helps > 0], hurts[hurts < 0]
        columns.append(
            f'<div class="method" data-method="{esc(method)}"><h3>{esc(method)}</h3>'
            f'<h4>helps most</h4><div class="row helps">{_test_cells(reader, helps)}</div>'
            f'<h4>hurts most</h4><div class="row hurts">{_test_cells(reader, hurts)}</div></div>'
        )
    body = (
        f'<div class="big">{picture}</div>'
        + table(pd.DataFrame(facts, columns=["fact", "value"]))
        + f"<h2>Test examples it helps and hurts most (top {k}), by method</h2>"
        + (
            f'<div class="methods">{"".join(columns)}</div>'
            if columns
            else note("no score table: run fit or estimate")
        )
    )
    return page(_name(reader, position).capitalize(), body, reader.run.uri)


def mislabel_page(reader: RunReader, params: dict[str, str], n: int = 60) -> str:
    """``/mislabel?method=``: training points by self score, highest first (a flipped label
    is fit only by memorising it, so it tends to score high)."""
    methods = list(reader.self_scores)
    if not methods:
        body = note(
            "no self_scores/*.parquet: estimate a method that writes self scores "
            "(e.g. `datamodels estimate RUN -m downsampling`)"
        )
        return page("Mislabel candidates", body, reader.run.uri)
    method = params.get("method") if params.get("method") in methods else methods[0]
    values = reader.self_scores[method]
    order = np.argsort(-values, kind="stable")[:n]
    inputs, train = reader.inputs("train"), reader.train
    cells = [
        thumb(
            "train",
            int(i),
            None if inputs is None else inputs[int(i)],
            f"{rank + 1}. #{i} y={train.at[int(i), 'label']} {values[i]:.3g}",
            "flipped" if train.at[int(i), "flipped"] else "",
            "label flipped" if train.at[int(i), "flipped"] else None,
        )
        for rank, i in enumerate(order)
    ]
    links = " ".join(
        f'<a href="{esc(query_link("/mislabel", {"method": m}))}">{esc(m)}</a>' for m in methods
    )
    n_flipped = int(train["flipped"].sum())
    found = int(train["flipped"].to_numpy()[order].sum())
    summary = (
        f"{found} of the run's {n_flipped} flipped labels are among these {len(order)}"
        if n_flipped
        else "this run flipped no labels (dataset.flip_fraction)"
    )
    body = (
        f"<p>self scores: {links}</p><p>training points by {esc(method)} self score, highest "
        f'first; red: the label was flipped. {esc(summary)}.</p><div class="grid" id="grid">'
        f"{''.join(cells)}</div>"
    )
    return page("Mislabel candidates", body, reader.run.uri)


def leakage_page(reader: RunReader, n: int = 24) -> str:
    """``/leakage``: train/test pairs ranked by datamodel weight and by the cosine of their
    datamodel vectors, each pair's two images side by side."""
    ranked = reader.leakage(n)
    if ranked is None and reader.index_note() and "datamodels" in reader.methods:
        return page("Leakage pairs", note(reader.index_note()), reader.run.uri)
    if ranked is None:
        body = note(
            "no datamodels of training inputs: run `datamodels fit` (a transfer run's "
            "training points are source classes)"
        )
        return page("Leakage pairs", body, reader.run.uri)
    test_in, train_in = reader.inputs("test"), reader.inputs("train")
    body = []
    for name, column in (("weight", "weight"), ("cosine", "cosine")):
        pairs = ranked[name]
        body.append(f"<h2>by {name}</h2>")
        if pairs.empty:
            body.append(
                note(
                    "no ranking by cosine: fit datamodels of the train split too "
                    "(--set fit.targets=all, needs dataset.eval_train)"
                )
            )
            continue
        cells = []
        for pair in pairs.itertuples():
            target, position = int(pair.target), int(pair.train_position)
            row = reader.test.loc[target]
            cells.append(
                f'<div class="pair row" data-rank="{int(pair.rank)}">'
                + thumb(
                    "test",
                    target,
                    test_in[int(row["row"])],
                    f"{int(pair.rank) + 1}. test #{target}",
                )
                + thumb(
                    "train",
                    position,
                    train_in[position],
                    f"train #{position} {column} {fmt(getattr(pair, column))}",
                )
                + "</div>"
            )
        body.append(f'<div class="grid pairs">{"".join(cells)}</div>')
    return page("Leakage pairs", "".join(body), reader.run.uri)
