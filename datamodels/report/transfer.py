"""The transfer report (``datamodels transfer-report RUN``): which source classes help or hurt
the target task, and what removing the detrimental ones does.

From a fitted transfer run (``scores/datamodels.parquet``: one row per target test example,
one weight per source class; positive = including the class raises the margin):

* ``class_effects``: per target class, the mean weight of every source class over that
  class's test examples; the most helpful and most harmful source classes of each;
* ``influenced``: the target examples a chosen source class moves most, either way;
* ``counterfactual``: the ``k`` source classes with the most negative total weight (summed
  over every target test example) become mask 1 of the config's ``stored`` plan (mask 0:
  every source class), written to ``plan_masks/<plan>.parquet``, and its models (``seeds``
  each) are trained through the driver; the target test accuracy before and after, per
  seed, with means and standard errors.

``build_transfer_report`` writes one self-contained HTML page (``<run>/transfer_report.html``)
with these tables and the inputs drawn as images.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from datamodels.config import Config
from datamodels.errors import DatamodelsError, StoreError
from datamodels.store import SOURCE_CLASSES_PATH, SOURCE_CLASSES_SCHEMA, Run


def source_classes(run: Run) -> pd.DataFrame:
    """``transfer/source_classes.parquet`` (refused in one line for a run without it)."""
    if not run.fs.isfile(SOURCE_CLASSES_PATH):
        raise StoreError(
            f"{run.fs.display(SOURCE_CLASSES_PATH)} is missing: not a transfer run "
            "(a config with a transfer section), or prepare has not run"
        )
    frame = run.read_table(SOURCE_CLASSES_PATH, SOURCE_CLASSES_SCHEMA).to_pandas()
    return frame.sort_values("train_position").reset_index(drop=True)


def transfer_weights(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(target labels int64[T], weights float32[T, n_classes]) over the target test split."""
    if "datamodels" not in run.score_methods():
        raise StoreError(f"{run.uri}: no scores/datamodels.parquet; run `datamodels fit` first")
    targets, scores = run.scores("datamodels")
    labels = run.labels("eval")[targets]
    test = run.examples()
    n_test = int((test["split"] == "test").sum())
    keep = targets < n_test
    return labels[keep], scores[keep]


def class_effects(run: Run, top: int = 3) -> pd.DataFrame:
    """One row per target class: its most helpful and most harmful source classes (mean
    datamodel weight over the class's test examples)."""
    names = source_classes(run)["name"].to_numpy()
    labels, weights = transfer_weights(run)
    rows = []
    for label in np.unique(labels):
        mean = weights[labels == label].mean(0)
        order = np.argsort(mean)
        rows.append(
            {
                "target class": int(label),
                "examples": int((labels == label).sum()),
                "most helpful": ", ".join(
                    f"{names[i]} ({mean[i]:+.3f})" for i in order[::-1][:top] if mean[i] > 0
                ),
                "most harmful": ", ".join(
                    f"{names[i]} ({mean[i]:+.3f})" for i in order[:top] if mean[i] < 0
                ),
            }
        )
    return pd.DataFrame(rows)


def total_effects(run: Run) -> pd.DataFrame:
    """One row per source class: its summed weight over every target test example (the
    predicted change of the summed target margin when it is included), most harmful first."""
    classes = source_classes(run)
    _, weights = transfer_weights(run)
    frame = classes.assign(total_weight=weights.sum(0).astype(np.float64))
    return frame.sort_values("total_weight", kind="stable").reset_index(drop=True)


def resolve_source_class(run: Run, chosen: str | int | None) -> int:
    """A source class by name or position (default: the most harmful one)."""
    classes = source_classes(run)
    if chosen is None:
        return int(total_effects(run)["train_position"].iloc[0])
    if isinstance(chosen, int) or str(chosen).isdigit():
        position = int(chosen)
        if 0 <= position < len(classes):
            return position
    matches = classes[classes["name"] == str(chosen)]
    if len(matches):
        return int(matches["train_position"].iloc[0])
    shown = ", ".join(classes["name"].head(6)) + (", ..." if len(classes) > 6 else "")
    raise DatamodelsError(
        f"--source-class {chosen!r} is neither a source class name nor a position "
        f"0..{len(classes) - 1} (names: {shown})"
    )


def influenced(run: Run, position: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(eval positions int64[2k]: the k targets raised most, then the k lowered most by
    source class ``position``, their weights float32[2k])."""
    targets, scores = run.scores("datamodels")
    column = scores[:, position]
    order = np.argsort(column)
    chosen = np.concatenate([order[::-1][:k], order[:k]])
    return targets[chosen], column[chosen]


@dataclass
class Counterfactual:
    plan: str
    removed: pd.DataFrame  # train_position, name, total_weight
    per_model: pd.DataFrame  # setting, seed, eval_accuracy, mean_margin
    summary: pd.DataFrame  # setting, models, mean accuracy, stderr, mean margin
    # mean margin change on the target test examples every all-classes model gets right, and
    # on those most of them get wrong (count of each)
    by_correctness: pd.DataFrame | None = None

    def predicted_margin_change(self, n_targets: int) -> float:
        """The datamodels' prediction of the mean target margin's change: minus the removed
        classes' total weight, per target."""
        return float(-self.removed["total_weight"].sum() / max(n_targets, 1))

    @property
    def margin_change(self) -> float:
        s = self.summary.set_index("setting")["mean margin"]
        return float(s.loc["without removed"] - s.loc["all source classes"])

    @property
    def change(self) -> tuple[float, float]:
        """(after - before mean target accuracy, its standard error)."""
        s = self.summary.set_index("setting")
        before, after = s.loc["all source classes"], s.loc["without removed"]
        return (
            float(after["mean accuracy"] - before["mean accuracy"]),
            float(np.hypot(after["stderr"], before["stderr"])),
        )


def counterfactual_plan(config: Config, name: str | None = None) -> Any:
    """The ``stored`` plan of two masks the counterfactual trains (the first, or ``name``)."""
    plans = [p for p in config.plans if p.kind == "stored" and p.count == 2]
    if name is not None:
        plans = [p for p in plans if p.name == name]
    if not plans:
        raise DatamodelsError(
            "the counterfactual needs a stored plan of two masks in the config (plans: - name: "
            "without, kind: stored, count: 2, seeds: 10)"
            + (f" named {name!r}" if name else "") + "; this run has none"
        )
    return plans[0]


def counterfactual(
    config: Config, run: Run, k: int = 4, plan: str | None = None, address: str | None = None,
    executor: Any = None, show_progress: bool = False, console: Any = None,
) -> Counterfactual:
    """Remove the ``k`` most harmful source classes (most negative total weight): mask 1 of
    the ``stored`` plan (mask 0 keeps every class); train its models through the driver and
    compare target test accuracy. A plan whose masks are already written is trained and
    read as it is, if it removes the same classes (else refused: it is written once)."""
    from datamodels import api

    spec = counterfactual_plan(config, plan)
    if k < 1:
        raise DatamodelsError(f"--k {k}: remove at least one source class")
    totals = total_effects(run).head(k)
    chosen = totals["train_position"].to_numpy(np.int64)
    written = run.plan_masks(spec.name)
    if written is None:
        run.write_plan_masks(spec.name, [np.zeros(0, np.int64), chosen])
    elif len(written) != 2 or len(written[0]) or sorted(written[1]) != sorted(chosen):
        raise DatamodelsError(
            f"{run.fs.display(run.plan_masks_path(spec.name))} already removes source classes "
            f"{sorted(written[-1].tolist())}, not the {k} most harmful {sorted(chosen.tolist())};"
            " its masks are written once: add another stored plan (or use a new run)"
        )
    api.train(config, run, address, executor, show_progress, console)
    masks, margins = run.masks_and_margins(plan=spec.name)
    if not len(masks) or masks.all(1).all():
        raise DatamodelsError(
            f"plan {spec.name!r}: no model without the removed classes trained (see "
            f"{run.fs.display('failures.parquet')})"
        )
    models = run.models(plan=spec.name, columns=["seed", "eval_accuracy"]).to_pandas()
    n_test = int((run.examples()["split"] == "test").sum())
    full = masks.all(1)
    per_model = pd.DataFrame(
        {
            "setting": np.where(full, "all source classes", "without removed"),
            "seed": models["seed"].to_numpy(),
            "eval_accuracy": models["eval_accuracy"].to_numpy(np.float64),
            "mean_margin": margins[:, :n_test].mean(1).astype(np.float64),
        }
    )
    grouped = per_model.groupby("setting")
    summary = grouped["eval_accuracy"].agg(models="count", mean="mean", std="std")
    summary["stderr"] = summary["std"] / np.sqrt(summary["models"])
    summary["mean margin"] = grouped["mean_margin"].mean()
    summary = (
        summary.reset_index().rename(columns={"mean": "mean accuracy"}).drop(columns="std")
    )
    removed = totals[["train_position", "name", "total_weight"]]
    before, after = margins[full, :n_test], margins[~full, :n_test]
    right = (before > 0).mean(0)
    change = after.mean(0) - before.mean(0)
    groups = {"right in every all-classes model": right == 1, "wrong in most": right < 0.5}
    by_correctness = pd.DataFrame(
        [
            {"target examples": name, "count": int(sel.sum()),
             "mean margin change": float(change[sel].mean()) if sel.any() else float("nan")}
            for name, sel in groups.items()
        ]
    )
    return Counterfactual(spec.name, removed, per_model, summary, by_correctness)


def _source_images(run: Run, positions: list[int], per_class: int = 6) -> list:
    examples = run.examples()
    source = examples[examples["split"] == "source"]
    from datamodels.data.beton import decode_resident
    from datamodels.orchestrate.context import local_beton

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
) -> Path:
    """Write the transfer report of ``run`` (default ``<run>/transfer_report.html``)."""
    from datamodels.report import plots
    from datamodels.report.html import _img, _note, _table, write_page

    run = run if isinstance(run, Run) else Run(run)
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
    body = "".join(
        f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections
    )
    return write_page(f"transfer report: {html.escape(run.uri)}", body, out)
