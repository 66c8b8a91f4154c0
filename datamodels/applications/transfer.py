"""A transfer run's source classes as datamodel inputs: which help or hurt the target task.

From a fitted transfer run (``scores/datamodels.parquet``: one row per target test example,
one weight per source class; positive = including the class raises the margin):
``class_effects`` (per target class, the most helpful and harmful source classes),
``total_effects`` (each source class's summed weight), ``influenced`` (the target examples a
source class moves most), and the counterfactual: the ``k`` source classes with the most
negative total weight (`removed_classes`) are left out of mask 1 of the config's ``stored``
plan; the stage ``transfer_counterfactual`` (`stages.transfer_counterfactual`) trains it and
writes the tables `read_counterfactual` reads back as a `Counterfactual`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from datamodels.config import Config
from datamodels.errors import DatamodelsError, StoreError
from datamodels.store import SOURCE_CLASSES_PATH, SOURCE_CLASSES_SCHEMA, Run
from datamodels.store.schemas import SCHEMA_VERSION

# The code version of the transfer counterfactual (``application.transfer``, recorded by the
# ``transfer_masks`` and ``transfer_counterfactual`` stages): `removed_classes`,
# `counterfactual_tables`; bump with any change that can move a number it computes for the same
# inputs.
VERSION = 1


# the counterfactual's tables (written by the transfer_counterfactual stage)
COUNTERFACTUAL_MODELS_PATH = "transfer/counterfactual_models.parquet"
COUNTERFACTUAL_REMOVED_PATH = "transfer/counterfactual_removed.parquet"
COUNTERFACTUAL_MARGINS_PATH = "transfer/counterfactual_margins.parquet"
_VERSION = {b"schema_version": str(SCHEMA_VERSION).encode()}  # as every table of a run


def _schema(*columns: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([pa.field(n, t, nullable=False) for n, t in columns], metadata=_VERSION)


COUNTERFACTUAL_MODELS_SCHEMA = _schema(
    ("setting", pa.string()), ("seed", pa.int64()), ("eval_accuracy", pa.float64()),
    ("mean_margin", pa.float64()),
)
COUNTERFACTUAL_REMOVED_SCHEMA = _schema(
    ("plan", pa.string()), ("train_position", pa.int64()), ("name", pa.string()),
    ("total_weight", pa.float64()),
)
COUNTERFACTUAL_MARGINS_SCHEMA = _schema(
    ("target examples", pa.string()), ("count", pa.int64()), ("mean margin change", pa.float64()),
)


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


def removed_classes(run: Run, k: int) -> pd.DataFrame:
    """The ``k`` source classes of most negative total weight (train_position, name,
    total_weight), the ones mask 1 of the counterfactual leaves out."""
    if k < 1:
        raise DatamodelsError(f"--k {k}: remove at least one source class")
    return total_effects(run).head(k)[["train_position", "name", "total_weight"]]


def counterfactual_tables(
    masks: np.ndarray, margins: np.ndarray, models: pd.DataFrame, n_test: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model: setting, seed, eval_accuracy, mean_margin; by correctness: target
    examples, count, mean margin change) from the counterfactual plan's trained models:
    masks bool[M, n_classes], margins float[M, n_eval], models (seed, eval_accuracy)."""
    full = masks.all(1)
    per_model = pd.DataFrame(
        {
            "setting": np.where(full, "all source classes", "without removed"),
            "seed": models["seed"].to_numpy(np.int64),
            "eval_accuracy": models["eval_accuracy"].to_numpy(np.float64),
            "mean_margin": margins[:, :n_test].mean(1).astype(np.float64),
        }
    )
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
    return per_model, by_correctness


def counterfactual_summary(per_model: pd.DataFrame) -> pd.DataFrame:
    """Per setting: models, mean accuracy, stderr, mean margin."""
    grouped = per_model.groupby("setting")
    summary = grouped["eval_accuracy"].agg(models="count", mean="mean", std="std")
    summary["stderr"] = summary["std"] / np.sqrt(summary["models"])
    summary["mean margin"] = grouped["mean_margin"].mean()
    return summary.reset_index().rename(columns={"mean": "mean accuracy"}).drop(columns="std")


def read_counterfactual(run: Run) -> Counterfactual:
    """The counterfactual's tables as a `Counterfactual` (a `StoreError` naming the command
    when they are missing)."""
    if not run.fs.isfile(COUNTERFACTUAL_MODELS_PATH):
        raise StoreError(
            f"transfer counterfactual: {COUNTERFACTUAL_MODELS_PATH} is missing; run "
            f"`datamodels transfer-counterfactual {run.uri}`"
        )
    removed = run.read_table(COUNTERFACTUAL_REMOVED_PATH, COUNTERFACTUAL_REMOVED_SCHEMA)
    removed = removed.to_pandas()
    per_model = run.read_table(COUNTERFACTUAL_MODELS_PATH, COUNTERFACTUAL_MODELS_SCHEMA)
    per_model = per_model.to_pandas()
    margins = run.read_table(COUNTERFACTUAL_MARGINS_PATH, COUNTERFACTUAL_MARGINS_SCHEMA)
    return Counterfactual(
        str(removed["plan"].iloc[0]), removed.drop(columns="plan"), per_model,
        counterfactual_summary(per_model), margins.to_pandas(),
    )
