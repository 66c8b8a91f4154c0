"""The HTML around every serve page: the frame with its navigation, escaping, tables, thumbnails.

All text that comes from a run (class names, labels, methods, values) goes through `esc`;
the pages build markup only from these helpers and numbers.
"""

from __future__ import annotations

import html
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from datamodels.browse.images import feature_text, is_image

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
nav a { margin-right: 1.2em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; }
.cell { width: 84px; text-align: center; font-size: 0.75em; }
.cell img, .big img { image-rendering: pixelated; border: 2px solid #ccc; }
.cell img { width: 64px; height: 64px; }
.wrong img { border-color: #c44; } .right img { border-color: #2a7; }
.flipped { color: #c44; font-weight: bold; }
.methods { display: flex; gap: 14px; overflow-x: auto; align-items: flex-start; }
.method { border: 1px solid #ddd; padding: 6px; min-width: 190px; }
.method h3 { font-size: 0.95em; margin: 0 0 4px; }
.row { display: flex; flex-wrap: wrap; gap: 4px; }
.pair { border: 1px solid #bbb; border-radius: 4px; padding: 3px; background: #fafafa; }
.note { color: #666; font-style: italic; }
form { margin: 0.5em 0; } label { margin-right: 0.8em; }
"""

NAV = (
    ("/", "run"),
    ("/tests", "test examples"),
    ("/mislabel", "mislabel candidates"),
    ("/leakage", "leakage pairs"),
    ("/methods", "methods"),
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A value as short escaped text: floats to 4 significant digits, missing as "–"."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return esc(value)


def page(title: str, body: str, run_uri: str) -> str:
    """One HTML page: the navigation, ``title`` (plain text) and ``body`` (markup)."""
    links = "".join(f'<a href="{href}">{esc(text)}</a>' for href, text in NAV)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)} · datamodels serve</title>"
        f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>'
        f'<nav>{links}<span class="note">{esc(run_uri)}</span></nav>'
        f"<h1>{esc(title)}</h1>{body}</body></html>"
    )


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(frame: pd.DataFrame, links: dict[str, str] | None = None) -> str:
    """``frame`` as an HTML table; ``links`` maps a column to a URL prefix its values join."""
    links = links or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for record in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, record, strict=True):
            text = fmt(value)
            if column in links and value is not None and not pd.isna(value):
                text = f'<a href="{links[column]}{int(value)}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def query_link(path: str, params: dict[str, object]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def thumb(
    split: str,
    ident: int,
    example: np.ndarray | None,
    caption: str,
    css: str = "",
    title: str | None = None,
) -> str:
    """A linked thumbnail of test target / train position ``ident`` with an escaped caption;
    tabular inputs show their first features, transfer sources their caption alone."""
    href = f"/{split}/{ident}"
    if example is not None and is_image(example):
        alt = f"{split} {ident}"
        picture = (
            f'<img src="/image/{split}/{ident}.png" alt="{esc(alt)}" '
            f'data-split="{split}" data-id="{ident}">'
        )
    elif example is not None:
        picture = f"<code>{feature_text(example)}</code>"
    else:
        picture = f"<code>{esc(split)} {ident}</code>"
    hover = f' title="{esc(title)}"' if title else ""
    return (
        f'<div class="cell {css}"{hover}><a href="{href}">{picture}</a>'
        f"<div>{esc(caption)}</div></div>"
    )
