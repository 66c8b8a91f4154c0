"""The transfer report (``datamodels transfer-report RUN``): which source classes help or hurt
the target task, and what removing the detrimental ones did.

The computations are `applications.transfer` (re-exported here): per target class the most
helpful and harmful source classes, the target examples a source class moves most. The
counterfactual (the ``k`` most harmful source classes left out and the stored plan retrained)
is made by the ``transfer_counterfactual`` stage (`datamodels.api.transfer_counterfactual`);
this report only reads its tables: when they are missing or stale the page says which command
makes them, or, asked for with ``counterfactual=True``, the report stops in one line.

``build_transfer_report`` writes one self-contained HTML page (``<run>/transfer_report.html``)
with these tables and the inputs drawn as images.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from datamodels.applications.transfer import (
    Counterfactual,
    class_effects,
    counterfactual_plan,
    influenced,
    read_counterfactual,
    resolve_source_class,
    source_classes,
    total_effects,
    transfer_weights,
)
from datamodels.config import Config, config_from_yaml_text
from datamodels.data.beton import decode_resident
from datamodels.errors import DatamodelsError, StoreError
from datamodels.orchestrate.context import local_beton
from datamodels.report import plots
from datamodels.report.html import _img, _note, _table, write_page
from datamodels.stages.states import DONE, make_command, stage_state
from datamodels.stages.transfer_counterfactual import TransferCounterfactualStage
from datamodels.store import Run

__all__ = [
    "Counterfactual",
    "build_transfer_report",
    "class_effects",
    "counterfactual",
    "counterfactual_plan",
    "influenced",
    "read_counterfactual",
    "resolve_source_class",
    "source_classes",
    "stored_counterfactual",
    "total_effects",
    "transfer_weights",
]


def stored_counterfactual(run: Run, required: bool = False) -> tuple[Counterfactual | None, str]:
    """(the counterfactual the stage wrote, "") when it is current; else (None, a line naming
    the command that makes it), or that line raised as a `StoreError` when ``required``."""
    config = config_from_yaml_text(run.read_config_text())
    try:
        stage = TransferCounterfactualStage.as_recorded(config, run)
    except DatamodelsError as err:  # no stored plan of two masks in the config
        if required:
            raise
        return None, str(err)
    state = stage_state(stage)
    if state == DONE:
        return read_counterfactual(run), ""
    line = f"transfer counterfactual: {stage.outputs()[0]} is {state}; run {make_command(stage)}"
    if required:
        raise StoreError(line)
    return None, line


def counterfactual(
    config: Config, run: Run, k: int = 4, plan: str | None = None, **_execution: Any
) -> Counterfactual:
    """The counterfactual of ``k`` removed classes as the stage wrote it, read only: a
    one-line `StoreError` naming the command when its tables are missing, stale or made with
    another ``k`` (``datamodels.api.transfer_counterfactual`` makes them; execution options
    such as ``executor`` are accepted and unused)."""
    stage = TransferCounterfactualStage(config, run, k, plan)
    state = stage_state(stage)
    if state != DONE:
        raise StoreError(
            f"transfer counterfactual: {stage.outputs()[0]} is {state} for --k {k}; run "
            f"{make_command(stage)[:-1]} --k {k}`"
        )
    return read_counterfactual(run)


def _source_images(run: Run, positions: list[int], per_class: int = 6) -> list:
    examples = run.examples()
    source = examples[examples["split"] == "source"]
    features = decode_resident(local_beton(run, run.recorded_config_hash() or "run"))[0]
    names = source_classes(run)["name"].to_numpy()
    rows = []
    for position in positions:
        index = source.loc[source["train_position"] == position, "index"].to_numpy()[:per_class]
        rows.append((str(names[position]), [features[i] for i in index]))
    return rows


def build_transfer_report(
    run: Run | str, out: str | Path | None = None, source_class: str | int | None = None,
    result: Counterfactual | None = None, top: int = 3, k: int = 8,
    counterfactual: bool | None = None,
) -> Path:
    """Write the transfer report of ``run`` (default ``<run>/transfer_report.html``).
    The counterfactual section shows ``result``, else the stage's tables: ``counterfactual``
    None: when they are current (a note naming the command otherwise); True: they must be
    (a one-line `StoreError` otherwise); False: no counterfactual section."""
    run = run if isinstance(run, Run) else Run(run)
    absent = ""
    if result is None and counterfactual is not False:
        result, absent = stored_counterfactual(run, required=bool(counterfactual))
    if out is None:
        local = run.local_path("transfer_report.html")
        out = local if local is not None else "transfer_report.html"
    effects = class_effects(run, top)
    totals = total_effects(run)
    position = resolve_source_class(run, source_class)
    names = source_classes(run)["name"].to_numpy()
    targets, weights = influenced(run, position, k)
    test_inputs = run.inputs("eval")
    labels = run.labels("eval")
    up = [test_inputs[t] for t in targets[:k]]
    down = [test_inputs[t] for t in targets[k:]]
    caption = lambda sel: ", ".join(  # noqa: E731
        f"#{int(t)} (label {int(labels[t])}, {w:+.3f})" for t, w in sel
    )
    pairs = list(zip(targets, weights, strict=True))
    sections = [
        (
            "Per target class: the most helpful and harmful source classes",
            _note("mean datamodel weight over the class's test examples; positive = "
                  "including the source class raises the target margin")
            + _table(effects),
        ),
        (
            "Source classes by total effect on the target test split",
            _table(pd.concat([totals.head(top * 2), totals.tail(top * 2)]).drop_duplicates())
            + _img(plots.extremes_figure(_source_images(run, [
                *totals["train_position"].head(3).tolist(),
                *totals["train_position"].tail(3).tolist()])), "source class examples"),
        ),
        (
            f"Target examples most influenced by source class {names[position]!r}",
            _img(plots.extremes_figure([("raised most", up), ("lowered most", down)]),
                 "influenced target examples")
            + _note(f"raised: {caption(pairs[:k])}") + _note(f"lowered: {caption(pairs[k:])}"),
        ),
    ]
    if result is not None:
        change, stderr = result.change
        sections.append(
            (
                f"Counterfactual: pre-training without the {len(result.removed)} most "
                "harmful source classes",
                _table(result.removed) + _table(result.summary)
                + (_table(result.by_correctness) if result.by_correctness is not None else "")
                + _note(f"target test accuracy change {change:+.4f} ± {stderr:.4f} (stderr), "
                        f"stored plan {result.plan!r}, retrained through the driver; mean target "
                        f"margin change {result.margin_change:+.3f} (the datamodels predicted "
                        f"{result.predicted_margin_change(len(run.labels('test'))):+.3f})"),
            )
        )
    elif absent:
        sections.append(("Counterfactual", _note(absent)))
    body = "".join(
        f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections
    )
    return write_page(f"transfer report: {html.escape(run.uri)}", body, out)
