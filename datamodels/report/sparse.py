"""The report's sparse decision layer section, from ``sparse_layer/*.parquet`` only.

The chosen layer's accuracy beside the dense layer's, the path (accuracy against features
per class), and per class its strongest features, each shown by the training inputs that
activate it most (images for image-like inputs, see ``plots.draw_input``).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from datamodels.report.plots import draw_input, to_png
from datamodels.store import Run
from datamodels.store.schemas import (
    SPARSE_FEATURES_PATH,
    SPARSE_FEATURES_SCHEMA,
    SPARSE_PATH_PATH,
    SPARSE_PATH_SCHEMA,
    SPARSE_SUMMARY_PATH,
    SPARSE_SUMMARY_SCHEMA,
)


def path_figure(path: pd.DataFrame, dense_test: float, max_features: int) -> str:
    """Validation and test accuracy along the path against the mean features per class."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    x = path["mean_features_per_class"]
    ax.plot(x, path["val_accuracy"], "o-", ms=3, label="sparse layer, validation")
    ax.plot(x, path["test_accuracy"], "s-", ms=3, label="sparse layer, test")
    ax.axhline(dense_test, color="0.3", ls="--", label="dense layer, test")
    ax.axvline(max_features, color="C3", ls=":", label=f"target ≤ {max_features} per class")
    chosen = path[path["chosen"]]
    ax.plot(chosen["mean_features_per_class"], chosen["test_accuracy"], "k*", ms=12)
    ax.set_xlabel("features per class (mean over classes)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def features_figure(
    features: pd.DataFrame, train_x: np.ndarray, train_y: np.ndarray, per_class: int, k: int
) -> str:
    """One row per class: its ``per_class`` strongest features, ``k`` top-activating training
    inputs each (titled with the feature and its weight on the first)."""
    classes = sorted(features["class"].unique())
    cols = per_class * k
    fig, axes = plt.subplots(
        len(classes), cols, figsize=(0.8 * cols, 0.95 * len(classes)), squeeze=False
    )
    for r, c in enumerate(classes):
        rows = features[features["class"] == c].sort_values("rank").head(per_class)
        for a in range(cols):
            axes[r, a].axis("off")
        for f, row in enumerate(rows.itertuples()):
            for i, pos in enumerate(list(row.top_train_positions)[:k]):
                ax = axes[r, f * k + i]
                ax.axis("on")
                draw_input(ax, train_x[pos])
                ax.set_xlabel(f"y={train_y[pos]}", fontsize=6, labelpad=1)
                if i == 0:
                    ax.set_title(f"f{row.feature} w={row.weight:+.2f}", fontsize=7, loc="left")
        axes[r, 0].set_ylabel(f"class {c}", fontsize=8, rotation=0, ha="right", va="center")
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    fig.subplots_adjust(wspace=0.08, hspace=0.55)
    return to_png(fig)


def sparse_layer_section(run: Run, per_class: int = 3, k: int = 4) -> str:
    """The section's HTML body (a note when the run has no sparse layer)."""
    if not all(run.fs.isfile(p) for p in (SPARSE_SUMMARY_PATH, SPARSE_PATH_PATH)):
        return '<p class="note">no sparse_layer/: run `datamodels sparse-layer RUN`</p>'
    summary = run.read_table(SPARSE_SUMMARY_PATH, SPARSE_SUMMARY_SCHEMA).to_pylist()[0]
    path = run.read_table(SPARSE_PATH_PATH, SPARSE_PATH_SCHEMA).to_pandas()
    features = run.read_table(SPARSE_FEATURES_PATH, SPARSE_FEATURES_SCHEMA).to_pandas()
    accuracy = pd.DataFrame(
        {
            "layer": [
                f"dense ({summary['num_features']} features × {summary['num_classes']} classes)",
                f"sparse (≤ {summary['chosen_max_features_per_class']} features per class)",
            ],
            "validation accuracy": [summary["dense_val_accuracy"], summary["sparse_val_accuracy"]],
            "test accuracy": [summary["dense_test_accuracy"], summary["sparse_test_accuracy"]],
            "nonzero weights": [
                summary["num_features"] * summary["num_classes"],
                int(path.loc[path["chosen"], "nnz"].iloc[0]),
            ],
        }
    )
    listing = pd.DataFrame(
        [
            {
                "class": c,
                "features (weight on the standardised feature)": ", ".join(
                    f"f{r.feature} ({r.weight:+.2f})" for r in g.sort_values("rank").itertuples()
                ),
            }
            for c, g in features.groupby("class")
        ]
    )
    img = (
        features_figure(features, run.inputs("train"), run.labels("train"), per_class, k)
        if len(features)
        else None
    )
    parts = [
        accuracy.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0),
        f"<p>model {summary['model_id']}, λ #{summary['chosen_lam_index']} "
        f"= {summary['chosen_lam']:.4g}, α = {summary['alpha']:g}; λ chosen on {summary['n_val']} "
        "held-out training inputs</p>",
        f'<img alt="sparse layer path" src="data:image/png;base64,'
        f'{path_figure(path, summary["dense_test_accuracy"], summary["max_features"])}">',
        listing.to_html(index=False, border=0),
    ]
    if img is not None:
        parts.append(
            "<h3>Strongest features per class: the training inputs that activate each most</h3>"
            f'<img alt="sparse layer features" src="data:image/png;base64,{img}">'
        )
    return "".join(parts)
