"""The report's sparse decision layer section, from ``sparse_layer/*.parquet`` only.

The chosen layer's accuracy beside the dense layer's, the path (accuracy against features
per class), and per class its strongest features, each shown by the training inputs that
activate it most (images for image-like inputs, see ``plots.draw_input``).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from datamodels.report.plots import to_png
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
    x = path["max_features_per_class"]
    ax.plot(x, path["val_accuracy"], "o-", ms=3, label="sparse layer, validation")
    ax.plot(x, path["test_accuracy"], "s-", ms=3, label="sparse layer, test")
    ax.axhline(dense_test, color="0.3", ls="--", label="dense layer, test")
    ax.axvline(max_features, color="C3", ls=":", label=f"target ≤ {max_features} per class")
    chosen = path[path["chosen"]]
    ax.plot(chosen["max_features_per_class"], chosen["test_accuracy"], "k*", ms=12)
    ax.set_xlabel("features per class (most in any class)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower right")
    return to_png(fig)


def _as_image(x: np.ndarray) -> np.ndarray | None:
    """An input as float RGB [H, W, 3] in [0, 1] the way ``draw_input`` shows it (square
    feature vectors such as digits' 64 as dark-on-light grey), None for non-image inputs."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        side = int(round(np.sqrt(x.size)))
        if side * side != x.size:
            return None
        x = x.reshape(side, side)
        x = 1.0 - (x - x.min()) / max(np.ptp(x), 1e-12)  # gray_r
    elif x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 1):
        x = x.reshape(x.shape[0], x.shape[1])
        x = (x - x.min()) / max(np.ptp(x), 1e-12)
    elif x.ndim == 3 and x.shape[-1] == 3:
        x = x / 255.0 if x.max() > 1 else x
    else:
        return None
    return np.repeat(x[:, :, None], 3, axis=2) if x.ndim == 2 else x


def features_figure(
    features: pd.DataFrame, train_x: np.ndarray, train_y: np.ndarray, per_class: int, k: int
) -> str | None:
    """One row per class: its ``per_class`` strongest features, ``k`` top-activating training
    inputs each, drawn as one mosaic (a feature's block is titled with its index and
    weight). None when the inputs are not images."""
    classes = sorted(features["class"].unique())
    first = _as_image(train_x[0])
    if first is None:
        return None
    h, w = first.shape[:2]
    gap, block_gap = max(1, h // 8), max(2, h // 2)
    block = k * (w + gap) + block_gap
    canvas = np.ones((len(classes) * (h + 2 * gap + h // 2), per_class * block, 3))
    fig, ax = plt.subplots(figsize=(0.55 * per_class * k + 0.8, 0.75 * len(classes) + 0.4))
    for r, c in enumerate(classes):
        top = r * (h + 2 * gap + h // 2) + h // 2
        rows = features[features["class"] == c].sort_values("rank").head(per_class)
        for f, row in enumerate(rows.itertuples()):
            left = f * block
            for i, pos in enumerate(list(row.top_train_positions)[:k]):
                image = _as_image(train_x[pos])
                x0 = left + i * (w + gap)
                canvas[top : top + h, x0 : x0 + w] = image
            ax.text(left, top - 1, f"f{row.feature} w={row.weight:+.2f}", fontsize=6, va="bottom")
        ax.text(-2, top + h / 2, f"class {c}", fontsize=7, ha="right", va="center")
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    return to_png(fig)


def sparse_layer_section(run: Run, per_class: int = 3, k: int = 5) -> str:
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
    parts = [
        accuracy.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0),
        f"<p>model {summary['model_id']}, λ #{summary['chosen_lam_index']} "
        f"= {summary['chosen_lam']:.4g}, α = {summary['alpha']:g}; λ chosen on {summary['n_val']} "
        "held-out training inputs</p>",
        f'<img alt="sparse layer path" src="data:image/png;base64,'
        f'{path_figure(path, summary["dense_test_accuracy"], summary["max_features"])}">',
        listing.to_html(index=False, border=0),
    ]
    if len(features):
        train_x, train_y = run.inputs("train"), run.labels("train")
        img = features_figure(features, train_x, train_y, per_class, k)
        parts.append(
            "<h3>Strongest features per class: the training inputs that activate each most</h3>"
            + (
                f'<img alt="sparse layer features" src="data:image/png;base64,{img}">'
                if img is not None
                else '<p class="note">the inputs are not images: see the train positions in '
                "sparse_layer/features.parquet</p>"
            )
        )
    return "".join(parts)
