"""The report's figures: matplotlib (Agg) figures from plain arrays and frames, each returned
as a base64 PNG string so the HTML page carries them inline (no file, no network fetch)."""

from __future__ import annotations

import base64
import io
import json

import matplotlib

matplotlib.use("Agg")  # no display: the report is written by jobs and tests
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from datamodels.report.colors import method_color, palette  # noqa: E402


def to_png(fig) -> str:
    """Base64 of the figure as PNG; closes the figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def draw_input(ax, x: np.ndarray) -> None:
    """One input on ``ax``: images uint8[H, W, C] as images, a square feature count
    (e.g. digits' 64 = 8×8) as a grey image, other features as bars."""
    x = np.asarray(x)
    side = int(round(np.sqrt(x.size))) if x.ndim == 1 else 0
    if x.ndim == 3:
        ax.imshow(x.squeeze(-1) if x.shape[-1] == 1 else x, cmap="gray")
    elif x.ndim == 2:
        ax.imshow(x, cmap="gray")
    elif side * side == x.size:
        ax.imshow(x.reshape(side, side), cmap="gray_r")
    else:
        ax.bar(np.arange(x.size), x, color="0.3")
        ax.set_xticks([])
        return
    ax.set_xticks([])
    ax.set_yticks([])


def lds_figure(evaluation: pd.DataFrame) -> str | None:
    """LDS per method with a 95% interval (1.96 × the stderr over targets in ``details``)."""
    rows = evaluation[evaluation["metric"] == "lds"].sort_values("value")
    if rows.empty:
        return None
    stderr = [json.loads(d or "{}").get("stderr") or 0.0 for d in rows["details"]]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    colours = palette(rows["method"])
    ax.barh(rows["method"], rows["value"], xerr=1.96 * np.asarray(stderr),
            color=[colours[m] for m in rows["method"]], capsize=3)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel("LDS (Spearman, mean over targets; 95% interval)")
    return to_png(fig)


def mislabel_figure(evaluation: pd.DataFrame) -> str | None:
    """Fraction of flipped labels found against fraction inspected, per self-score method."""
    rows = evaluation[evaluation["metric"] == "mislabel_auc"]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    colours = palette(rows["method"])
    for row in rows.itertuples():
        curve = json.loads(row.details)
        ax.plot(curve["inspected"], curve["found"], color=colours[row.method],
                label=f"{row.method} (AUC {row.value:.2f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", label="chance")
    ax.set_xlabel("fraction of training set inspected")
    ax.set_ylabel("fraction of flipped labels found")
    ax.legend(fontsize=8)
    return to_png(fig)


def support_figure(
    target_input: np.ndarray,
    title: str,
    helpful: list[tuple[np.ndarray, str]],
    harmful: list[tuple[np.ndarray, str]],
) -> str:
    """The target beside its most helpful (top row) and most harmful (bottom row) inputs."""
    width = max(len(helpful), len(harmful), 1)
    fig, axes = plt.subplots(2, width + 1, figsize=(1.5 * (width + 1), 3.4), squeeze=False)
    draw_input(axes[0, 0], target_input)
    axes[0, 0].set_title(title, fontsize=8)
    axes[1, 0].axis("off")
    for row, items, name in ((0, helpful, "helpful"), (1, harmful, "harmful")):
        for col in range(width):
            ax = axes[row, col + 1]
            if col < len(items):
                draw_input(ax, items[col][0])
                ax.set_title(f"{name}\n{items[col][1]}", fontsize=7)
            else:
                ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def pairs_figure(pairs: list[tuple[np.ndarray, np.ndarray, str]]) -> str:
    """Test input above its training partner, one column per pair."""
    fig, axes = plt.subplots(2, len(pairs), figsize=(1.5 * len(pairs), 3.2), squeeze=False)
    for col, (test_x, train_x, caption) in enumerate(pairs):
        draw_input(axes[0, col], test_x)
        axes[0, col].set_title(caption, fontsize=7)
        draw_input(axes[1, col], train_x)
    axes[0, 0].set_ylabel("test")
    axes[1, 0].set_ylabel("train")
    fig.tight_layout()
    return to_png(fig)


def embedding_figure(coordinates: np.ndarray, labels: np.ndarray, explained: np.ndarray) -> str:
    """Test targets on the first two principal components of their datamodel weights."""
    fig, ax = plt.subplots(figsize=(5, 4))
    y = coordinates[:, 1] if coordinates.shape[1] > 1 else np.zeros(len(coordinates))
    points = ax.scatter(coordinates[:, 0], y, c=labels, cmap="tab10", s=12)
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
    if len(explained) > 1:
        ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
    fig.colorbar(points, ax=ax, label="label")
    return to_png(fig)


def extremes_figure(rows: list[tuple[str, list[np.ndarray]]]) -> str:
    """One row of inputs per (caption, inputs): the examples at each extreme."""
    width = max(len(items) for _, items in rows)
    fig, axes = plt.subplots(
        len(rows), width, figsize=(1.2 * width, 1.4 * len(rows)), squeeze=False
    )
    for r, (caption, items) in enumerate(rows):
        for c in range(width):
            if c < len(items):
                draw_input(axes[r, c], items[c])
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(caption, fontsize=7, rotation=0, ha="right", va="center")
    return to_png(fig)


def brittleness_figure(support: np.ndarray, n_train: int) -> str | None:
    """Histogram of the smallest flipping support over correctly predicted test targets."""
    finite = support[np.isfinite(support) & (support > 0)]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if len(finite):
        ax.hist(finite, bins=min(40, max(5, len(np.unique(finite)))), color="C3")
    for fraction, style in ((0.01, ":"), (0.05, "--")):
        ax.axvline(fraction * n_train, color="0.3", ls=style, label=f"{fraction:.0%} of train")
    ax.set_xlabel("training points removed to flip the prediction (datamodel)")
    ax.set_ylabel("test targets")
    ax.legend(fontsize=8)
    return to_png(fig)


def removal_figure(results: pd.DataFrame) -> str | None:
    """Counterfactual removal: predicted against retrained margin change per removal set
    (``removals/results.parquet``), one panel per method, ±1.96 stderr over seeds; the
    diagonal is perfect prediction, hollow markers are sets whose prediction flipped."""
    trained = results[results["actual"].notna()]
    if trained.empty:
        return None
    methods = sorted(trained["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = trained[trained["method"] == method]
        predicted, actual = rows["predicted"].to_numpy(float), rows["actual"].to_numpy(float)
        stderr = np.nan_to_num(rows["stderr"].to_numpy(float))
        ax.errorbar(predicted, actual, yerr=1.96 * stderr, fmt="none", ecolor="0.7", lw=0.8)
        flipped = rows["flipped"].astype(bool).to_numpy()
        colour = method_color(method)
        for kind, marker in (("grid", "o"), ("brittle", "s")):
            chosen = (rows["kind"] == kind).to_numpy()
            ax.scatter(predicted[chosen & ~flipped], actual[chosen & ~flipped], marker=marker,
                       color=colour, s=18, label=f"{kind}")
            ax.scatter(predicted[chosen & flipped], actual[chosen & flipped], marker=marker,
                       facecolors="none", edgecolors=colour, s=22, label=f"{kind}, flipped")
        # the x axis is this method's own: its scores' spread fills the panel (a method whose
        # scores are not on the margin scale, e.g. TRAK's, would otherwise sit at x = 0);
        # the y = x diagonal is drawn over that range
        span = float(predicted.max() - predicted.min()) or abs(float(predicted.max())) or 1.0
        x_low, x_high = predicted.min() - 0.05 * span, predicted.max() + 0.05 * span
        ax.set_xlim(x_low, x_high)
        ax.plot([x_low, x_high], [x_low, x_high], color="0.5", ls="--", lw=0.8)
        corr = np.corrcoef(predicted, actual)[0, 1] if len(rows) > 2 else float("nan")
        # the slope says whether the scores' scale is a margin change (1) or only a ranking
        slope = np.polyfit(predicted, actual, 1)[0] if len(rows) > 1 else float("nan")
        ax.set_title(
            f"{method} (Pearson {corr:.2f}, slope {slope:.2g}, {len(rows)} sets)", fontsize=9
        )
        ax.set_xlabel("predicted margin change (−Σ removed scores;\nx axis scaled to this method)")
        ax.set_ylabel("retrained margin change")
        ax.legend(fontsize=7)
    return to_png(fig)


def verified_brittleness_figure(results: pd.DataFrame, n_train: int) -> str | None:
    """Brittleness verified by retraining: per target, the predicted smallest flipping k
    (``predicted_support``; "never" past the plan's cap), stacked by whether retraining
    without that many most-helpful points flipped the prediction."""
    brittle = results[(results["kind"] == "brittle") & results["flipped"].notna()]
    brittle = brittle[brittle["baseline_margin"] > 0]
    if brittle.empty:
        return None
    methods = sorted(brittle["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.4), squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        rows = brittle[brittle["method"] == method]
        cap = int(rows["k"].max())
        support = rows["predicted_support"].to_numpy(float)
        shown = np.where(np.isfinite(support) & (support <= cap), support, cap + 1)
        flipped = rows["flipped"].astype(bool).to_numpy()
        bins = np.linspace(0.5, cap + 1.5, min(20, cap + 1) + 1)
        ax.hist([shown[flipped], shown[~flipped]], bins=bins, stacked=True,
                color=["C3", "C0"], label=["flipped when retrained", "did not flip"])
        for fraction, style in ((0.01, ":"), (0.05, "--")):
            if fraction * n_train <= cap + 1:
                ax.axvline(fraction * n_train, color="0.3", ls=style,
                           label=f"{fraction:.0%} of train")
        ax.set_title(f"{method}: {int(flipped.sum())}/{len(rows)} verified", fontsize=9)
        ax.set_xlabel(f"predicted k to flip (>{cap}: not within the cap)")
        ax.set_ylabel("test targets")
        ax.legend(fontsize=7)
    return to_png(fig)


def lds_curve_figure(curve: pd.DataFrame, evaluation: pd.DataFrame | None) -> str | None:
    """LDS of the datamodels against the number of models they were fitted on (95%
    intervals), with every other method's LDS in ``evaluation`` as a horizontal line."""
    if curve is None or curve.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    stderr = curve["stderr"].fillna(0.0).to_numpy()
    others = pd.DataFrame(columns=["method", "value"])
    if evaluation is not None:
        lds_rows = evaluation[evaluation["metric"] == "lds"]
        others = lds_rows[lds_rows["method"] != "datamodels"].sort_values("value", ascending=False)
    colours = palette(["datamodels", *others["method"]])
    ax.errorbar(
        curve["n_models"], curve["lds"], yerr=1.96 * stderr, marker="o",
        color=colours["datamodels"], capsize=3, label="datamodels (first m models)",
    )
    for row in others.itertuples():
        ax.axhline(row.value, color=colours[row.method], ls="--", lw=1, label=row.method)
    ax.set_xscale("log")
    # ticks at the measured counts, plain numbers: log-scale minor labels (2.2×10¹, 2.3×10¹,
    # ...) run into each other over a short range
    counts = sorted(int(n) for n in curve["n_models"].unique())
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("models used to fit the datamodels (m)")
    ax.set_ylabel("LDS on the held-out plan")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return to_png(fig)


def alpha_effect_figure(summary: pd.DataFrame) -> str | None:
    """Per subset size α: LDS held out within the level and on the evaluation plan (left);
    agreement of each level's datamodels with the reference weights (right)."""
    if summary is None or summary.empty:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    alpha = summary["alpha"].to_numpy()
    left.plot(alpha, summary["lds_level"], marker="o", label="held out at the same α")
    if summary["lds_eval"].notna().any():
        left.plot(alpha, summary["lds_eval"], marker="s", label="on the evaluation plan")
    left.set_xlabel("subset size α")
    left.set_ylabel("LDS")
    left.legend(fontsize=7)
    k = int(summary["k"].iloc[0]) if "k" in summary else None
    right.plot(alpha, summary["top_overlap"], marker="o", label=f"top-{k} overlap")
    right.plot(alpha, summary["sign_agreement"], marker="^", label=f"top-{k} sign agreement")
    right.plot(alpha, summary["weight_correlation"], marker="s", label="weight correlation")
    right.set_xlabel("subset size α")
    right.set_ylabel(f"agreement with {summary['reference'].iloc[0]}")
    right.set_ylim(-0.05, 1.05)
    right.legend(fontsize=7)
    fig.tight_layout()
    return to_png(fig)
