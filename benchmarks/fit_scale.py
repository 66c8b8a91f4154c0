"""Scale benchmark for the validation-selected LASSO fit (``datamodels.regress.lasso_select``).

Synthetic run: bool masks m × n with inclusion probability α, T targets from a planted
sparse model ``y_t = M w_t + b_t + noise`` (``--support`` nonzeros per target, |w| in
[0.5, 1.5], noise std ``--noise``). Prints wall time, peak RSS (``ru_maxrss``), support
recovery, and, as the same-run baseline, the time of one chunked pass ``X^T Y`` over the
masks (the unit of work a KKT check costs): ``fit / pass`` is the cost in passes.

    python benchmarks/fit_scale.py                      # m = n = 50,000, T = 256
    python benchmarks/fit_scale.py --m 5000 --n 2000 --targets 32
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from datamodels.regress import lasso_select, split_rows
from datamodels.regress.design import MaskRows
from datamodels.regress.passes import centred_targets, row_stats


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_problem(
    m: int, n: int, t: int, alpha: float, support: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks bool[m, n], margins float32[m, t], true_w float32[t, n])``, built in row
    chunks so no float copy of the masks exists."""
    rng = np.random.default_rng(seed)
    masks = np.empty((m, n), dtype=np.bool_)
    true_w = np.zeros((t, n), dtype=np.float32)
    for target in range(t):
        cols = rng.choice(n, size=min(support, n), replace=False)
        true_w[target, cols] = rng.choice([-1.0, 1.0], cols.size) * rng.uniform(0.5, 1.5, cols.size)
    used = np.flatnonzero(true_w.any(0))
    w_used = true_w[:, used].T.copy()
    margins = np.empty((m, t), dtype=np.float32)
    step = 1024  # keeps the float32 random draws small next to the masks
    for start in range(0, m, step):
        stop = min(start + step, m)
        masks[start:stop] = rng.random((stop - start, n), dtype=np.float32) < alpha
        margins[start:stop] = masks[start:stop][:, used].astype(np.float32) @ w_used
    margins += rng.normal(0.0, noise, size=(m, t)).astype(np.float32) + rng.normal(size=t).astype(
        np.float32
    )
    return masks, margins, true_w


def one_pass_seconds(
    masks: np.ndarray, margins: np.ndarray, rows: np.ndarray, device: torch.device
) -> float:
    """Seconds for one chunked pass ``X^T Y`` over ``rows``: the solver's unit of work (a
    KKT check costs one)."""
    t0 = time.perf_counter()
    block = MaskRows(masks, rows, device=device, dtype=torch.float32)
    yc, y_mean = centred_targets(margins[rows], device, torch.float32)
    row_stats(block, yc, y_mean)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--m", type=int, default=50_000)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--targets", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--support", type=int, default=20)
    parser.add_argument("--noise", type=float, default=2.0)
    parser.add_argument("--n-lambdas", type=int, default=10)
    parser.add_argument("--eps", type=float, default=1e-2)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compare-cpu", action="store_true",
        help="also fit on the CPU in the same run: time ratio and max |w_device - w_cpu|",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    masks, margins, true_w = make_problem(
        args.m, args.n, args.targets, args.alpha, args.support, args.noise, args.seed
    )
    t_make = time.perf_counter() - t0
    rss_data = peak_rss_gib()
    print(
        f"problem: m={args.m} n={args.n} T={args.targets} alpha={args.alpha} "
        f"support={args.support} noise={args.noise}  ({t_make:.1f} s to generate, "
        f"masks {masks.nbytes / 2**30:.2f} GiB, peak RSS so far {rss_data:.2f} GiB)"
    )

    device = torch.device(args.device)
    train_rows, val_rows = split_rows(args.m, args.val_fraction, args.seed)

    fit_args = dict(n_lambdas=args.n_lambdas, eps=args.eps, patience=args.patience, device=device)
    t_before = one_pass_seconds(masks, margins, train_rows, device)
    t0 = time.perf_counter()
    fit = lasso_select(masks, margins, (train_rows, val_rows), **fit_args)
    t_fit = time.perf_counter() - t0
    # The machines are shared: time the baseline on both sides of the fit, keep the faster.
    t_pass = min(t_before, one_pass_seconds(masks, margins, train_rows, device))

    if args.compare_cpu:
        t0 = time.perf_counter()
        on_cpu = lasso_select(masks, margins, (train_rows, val_rows), **(fit_args | {
            "device": torch.device("cpu")
        }))
        t_cpu = time.perf_counter() - t0
        diff = np.abs(fit.weights - on_cpu.weights).max()
        scale = np.abs(on_cpu.weights).max()
        same_support = ((fit.weights != 0) == (on_cpu.weights != 0)).mean()
        print(
            f"cpu ({torch.get_num_threads()} threads): {t_cpu:.1f} s = {t_cpu / t_fit:.1f}x the "
            f"{args.device} fit; max |w_{args.device} - w_cpu| = {diff:.2e} (max |w| {scale:.2f}); "
            f"same support on {100 * same_support:.3f}% of weights"
        )

    truth = true_w != 0
    found = fit.weights != 0
    recall = (truth & found & (np.sign(fit.weights) == np.sign(true_w))).sum() / truth.sum()
    spurious = np.abs(np.where(truth, 0.0, fit.weights)).max(axis=1)
    smallest_true = np.abs(np.where(truth, fit.weights, np.inf)).min(axis=1)
    print(f"baseline one pass X^T Y (train rows): {t_pass:.1f} s (faster of before/after)")
    print(f"lasso_select wall time: {t_fit:.1f} s  = {t_fit / t_pass:.1f} passes")
    print(f"peak RSS: {peak_rss_gib():.2f} GiB (masks + margins alone: {rss_data:.2f} GiB)")
    print(
        f"converged: {fit.converged.mean():.3f}  nnz median {np.median(fit.nnz):.0f} "
        f"max {fit.nnz.max()}  chosen path index median "
        f"{np.median(np.argmin(fit.val_mse_path, axis=1)):.0f}"
    )
    print(
        f"support recall (true nonzero, right sign): {recall:.4f}; targets with max spurious "
        f"|w| < min true |w|: {(spurious < smallest_true).mean():.3f}; "
        f"val spearman median {np.median(fit.val_spearman):.3f}"
    )


if __name__ == "__main__":
    main()
