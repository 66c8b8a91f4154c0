"""The "what each prediction rests on" section: a target beside its most helpful (top row)
and most harmful (bottom row) training inputs, laid out by the page, not inside one figure.

Each input is its own small PNG in a ``<figure>`` with an HTML ``<figcaption>`` under it, in
a CSS grid: a caption sits in its own grid cell and can never run into the row above (the
Chromium test compares their boxes).
"""

from __future__ import annotations

import html

import numpy as np

from datamodels.applications import split_scores
from datamodels.applications.tables import test_input_rows
from datamodels.report.plots import draw_input, plt, to_png  # plt: on Agg
from datamodels.store import Run

STYLE = """
.support { display: grid; gap: 4px 6px; margin: 0.6em 0 1.2em; justify-content: start; }
.support figure { margin: 0; text-align: center; font-size: 11px; line-height: 1.25; }
.support img { width: 90px; height: 90px; margin: 0 auto; image-rendering: pixelated; }
.support figcaption { width: 110px; }
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


def support_section(run: Run, method: str, n_targets: int, k: int) -> str:
    """The ``n_targets`` test targets with the largest total |score|, each with its ``k``
    most helpful and ``k`` most harmful training inputs under ``method``'s scores."""
    split = split_scores(run, method)
    test_x, train_x = run.inputs("test"), run.inputs("train")
    test_y, train_y = run.labels("test"), run.labels("train")
    rows_in_test = test_input_rows(run, split.test_targets)
    parts = []
    strongest = np.argsort(-np.abs(split.test_scores).sum(1), kind="stable")[:n_targets]
    for row in sorted(strongest):
        target = int(split.test_targets[row])
        weights = split.test_scores[row]
        order = np.argsort(-weights, kind="stable")
        helpful = [
            (train_x[i], f"y={train_y[i]} w={weights[i]:+.3f}") for i in order[:k] if weights[i] > 0
        ]
        harmful = [
            (train_x[i], f"y={train_y[i]} w={weights[i]:+.3f}")
            for i in order[::-1][:k]
            if weights[i] < 0
        ]
        at = rows_in_test[row]
        parts.append(support_grid((test_x[at], f"target {target}\nlabel {test_y[at]}"),
                                  helpful, harmful))
    return "".join(parts)
