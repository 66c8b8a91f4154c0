"""The "what each prediction rests on" section: a target beside its most helpful (top row)
and most harmful (bottom row) training inputs, laid out by the page, not inside one figure.

Where ``examples.parquet`` names the examples' files (``imagefolder`` runs: ``class_name``
and ``source_path``), each caption carries them too, escaped like every caption.

Each input is its own small PNG in a ``<figure>`` with an HTML ``<figcaption>`` under it, in
a CSS grid: a caption sits in its own grid cell and can never run into the row above (the
Chromium test compares their boxes).
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from datamodels.applications import split_scores
from datamodels.applications.tables import test_input_rows
from datamodels.report.plots import draw_input, plt, to_png  # plt: on Agg
from datamodels.store import EXAMPLES_PATH, Run
from datamodels.store.schemas import EXAMPLES_SOURCE_COLUMNS

STYLE = """
.support { display: grid; gap: 4px 6px; margin: 0.6em 0 1.2em; justify-content: start; }
.support figure { margin: 0; text-align: center; font-size: 11px; line-height: 1.25; }
.support img { width: 90px; height: 90px; margin: 0 auto; image-rendering: pixelated; }
.support figcaption { width: 110px; overflow-wrap: anywhere; }
"""


def thumbnail(x: np.ndarray) -> str:
    """One input as a small base64 PNG, no axes."""
    fig, ax = plt.subplots(figsize=(1.2, 1.2))
    draw_input(ax, x)
    ax.set_frame_on(False)
    return to_png(fig)


def _cell(x: np.ndarray | None, caption: str, alt: str) -> str:
    if x is None:
        return "<div></div>"
    return (
        f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{thumbnail(x)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def support_grid(
    target: tuple[np.ndarray, str],
    helpful: list[tuple[np.ndarray, str]],
    harmful: list[tuple[np.ndarray, str]],
) -> str:
    """A two-row grid: the target then its helpful inputs; a blank then its harmful ones.
    Captions are HTML (lines separated by ``\\n``)."""
    width = max(len(helpful), len(harmful), 1)

    def caption(text: str) -> str:
        return "<br>".join(html.escape(line) for line in text.split("\n"))

    cells = [_cell(target[0], caption(target[1]), "target")]
    for row, name in ((helpful, "helpful"), (harmful, "harmful")):
        if name == "harmful":
            cells.append("<div></div>")
        for col in range(width):
            item = row[col] if col < len(row) else None
            cells.append(
                _cell(None if item is None else item[0],
                      caption(f"{name}\n{item[1]}") if item else "", name)
            )
    return (
        f'<div class="support" style="grid-template-columns: repeat({width + 1}, 110px)">'
        + "".join(cells) + "</div>"
    )


def example_sources(run: Run) -> dict[str, dict[int, str]]:
    """{"test": eval position -> "class name\\nfile", "train": train position -> ...}: the
    lines a caption adds for an example whose ``examples.parquet`` row names its class and
    file (empty maps for a run without those columns)."""
    table = run.read_table(EXAMPLES_PATH)
    out: dict[str, dict[int, str]] = {"test": {}, "train": {}}
    if not set(EXAMPLES_SOURCE_COLUMNS) <= set(table.column_names):
        return out
    frame = table.to_pandas()
    for record in frame.itertuples(index=False):
        lines = [v for v in (record.class_name, record.source_path) if isinstance(v, str)]
        if not lines:
            continue
        if record.split == "test" and pd.notna(record.eval_position):
            out["test"][int(record.eval_position)] = "\n".join(lines)
        if pd.notna(record.train_position):
            out["train"][int(record.train_position)] = "\n".join(lines)
    return out


def _with(caption: str, extra: str | None) -> str:
    return f"{caption}\n{extra}" if extra else caption


def support_section(run: Run, method: str, n_targets: int, k: int) -> str:
    """The ``n_targets`` test targets with the largest total |score|, each with its ``k``
    most helpful and ``k`` most harmful training inputs under ``method``'s scores."""
    split = split_scores(run, method)
    test_x, train_x = run.inputs("test"), run.inputs("train")
    test_y, train_y = run.labels("test"), run.labels("train")
    rows_in_test = test_input_rows(run, split.test_targets)
    sources = example_sources(run)
    test_sources, train_sources = sources["test"], sources["train"]
    parts = []
    strongest = np.argsort(-np.abs(split.test_scores).sum(1), kind="stable")[:n_targets]
    for row in sorted(strongest):
        target = int(split.test_targets[row])
        weights = split.test_scores[row]
        order = np.argsort(-weights, kind="stable")
        helpful = [
            (train_x[i], _with(f"y={train_y[i]} w={weights[i]:+.3f}", train_sources.get(int(i))))
            for i in order[:k]
            if weights[i] > 0
        ]
        harmful = [
            (train_x[i], _with(f"y={train_y[i]} w={weights[i]:+.3f}", train_sources.get(int(i))))
            for i in order[::-1][:k]
            if weights[i] < 0
        ]
        at = rows_in_test[row]
        caption = _with(f"target {target}\nlabel {test_y[at]}", test_sources.get(target))
        parts.append(support_grid((test_x[at], caption), helpful, harmful))
    return "".join(parts)
