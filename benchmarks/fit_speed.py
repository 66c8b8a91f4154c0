"""Datamodel fitting: the batched LASSO solver vs scikit-learn one target at a time.

Both fit the same targets on the same digits run with the same λ grid (ours, per target),
the same train/validation split of the fitting models, pick λ by validation MSE and refit
on train+validation. Printed: wall time of each, the ratio, and the LDS of each on the
held-out eval plan. Also prints LDS against the number of fitting models.

    python benchmarks/fit_speed.py      # trains runs/bench_fit if missing (5,000 models)
    python benchmarks/fit_speed.py --targets 64 --curve 500,1000,2000,4000
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from datamodels.config import load_config
from datamodels.metrics.lds import average_replicates, lds
from datamodels.regress.lasso import lasso_select, split_rows
from datamodels.store import Run

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"


def ensure_run(path: str, models: int) -> Run:
    """An existing run at ``path`` as it is, or a new digits run with ``models`` fitting models."""
    run = Run(path)
    if run.has_config():
        return run
    from datamodels.api import train

    train(load_config(CONFIG, [f"plans.train.count={models}"]), path, show_progress=True)
    return run


def sklearn_select(
    masks: np.ndarray, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray, lams: np.ndarray
):
    """Per target: scikit-learn lasso_path on centred train rows, λ by validation MSE, refit."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso, lasso_path

    X = masks.astype(np.float64)
    Xt, Xv = X[train_rows], X[val_rows]
    x_mean = Xt.mean(0)
    Xtc = Xt - x_mean
    weights = np.zeros((y.shape[1], X.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for t in range(y.shape[1]):
            yt = y[train_rows, t].astype(np.float64)
            y_mean = yt.mean()
            grid = np.sort(lams[t])[::-1]
            _, coefs, _ = lasso_path(Xtc, yt - y_mean, alphas=grid, tol=1e-4)
            intercepts = y_mean - x_mean @ coefs
            val_pred = Xv @ coefs + intercepts
            mse = ((val_pred - y[val_rows, t][:, None]) ** 2).mean(0)
            best = grid[int(np.argmin(mse))]
            if best <= 0:
                continue
            model = Lasso(alpha=best, tol=1e-4).fit(X, y[:, t])
            weights[t] = model.coef_
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="runs/bench_fit")
    parser.add_argument(
        "--models", type=int, default=5000, help="training-plan models (if the run is created)"
    )
    parser.add_argument(
        "--targets", type=int, default=0, help="first N test targets (0: all test targets)"
    )
    parser.add_argument(
        "--curve", default="500,1000,2000,4000", help="model counts for the LDS curve ('' to skip)"
    )
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()

    run = ensure_run(args.run, args.models)
    masks, margins = run.masks_and_margins(plan="train")
    eval_masks, eval_margins = average_replicates(*run.masks_and_margins(plan="eval"))
    examples = run.examples()
    targets = np.sort(examples.loc[examples["split"] == "test", "eval_position"].to_numpy(np.int64))
    if args.targets:
        targets = targets[: args.targets]
    y = margins[:, targets]
    m = len(masks)
    train_rows, val_rows = split_rows(m, 0.1, 0)
    print(
        f"digits run {args.run}: {m} fitting models, {len(eval_masks)} held-out subsets, "
        f"{len(targets)} targets, n_train={masks.shape[1]}"
    )

    start = time.perf_counter()
    ours = lasso_select(masks, y, (train_rows, val_rows))
    ours_seconds = time.perf_counter() - start
    ours_lds = lds(ours.weights, eval_masks, eval_margins[:, targets]).value
    print(f"{'solver':<28}{'seconds':>10}{'LDS':>8}")
    print(f"{'batched (datamodels)':<28}{ours_seconds:>10.1f}{ours_lds:>8.4f}")
    if not args.skip_sklearn:
        start = time.perf_counter()
        theirs = sklearn_select(masks, y, train_rows, val_rows, ours.lams)
        sk_seconds = time.perf_counter() - start
        sk_lds = lds(theirs, eval_masks, eval_margins[:, targets]).value
        print(f"{'scikit-learn per target':<28}{sk_seconds:>10.1f}{sk_lds:>8.4f}")
        print(f"speed-up {sk_seconds / ours_seconds:.1f}x; LDS difference {ours_lds - sk_lds:+.4f}")

    if args.curve:
        print(f"\n{'models':>8}{'LDS':>8}{'fit s':>8}")
        for count in [int(c) for c in args.curve.split(",") if int(c) <= m]:
            rows = np.arange(count)
            tr, va = split_rows(count, 0.1, 0)
            start = time.perf_counter()
            sel = lasso_select(masks[rows], y[rows], (tr, va))
            seconds = time.perf_counter() - start
            print(
                f"{count:>8}{lds(sel.weights, eval_masks, eval_margins[:, targets]).value:>8.4f}"
                f"{seconds:>8.1f}"
            )


if __name__ == "__main__":
    main()
