"""The estimators side by side on digits with 10% flipped labels: the retraining ones, and the
gradient ones over the checkpoints configs/digits.yaml saves (first 20 models of ``train``).

Trains through the real Ray driver (configs/digits.yaml: MLP, its default recipe) into a run
directory, reused when it is already there: an alpha = 1/2 plan ``train`` (downsampling,
memorization, Banzhaf), an Owen grid ``grid`` (Shapley, Beta Shapley), optionally a TMC plan
``walks`` and a LOO plan ``loo`` on a few points, and the held-out ``eval`` plan of the config
(LDS only). Then, for each method, times ``estimate`` and prints: seconds, the models it
read, the fraction of flipped labels found with 20% of the training set inspected (ranked by
self score), the mislabel-detection AUC, and LDS on the eval plan (test targets).

    python benchmarks/estimators.py                       # 2,000 alpha=1/2 models, 8 x 100 grid
    python benchmarks/estimators.py --models 4000 --tmc 5 --run runs/bench_big
    python benchmarks/estimators.py --methods memorization,banzhaf

TMC walks are long on digits (1,438 training points; a walk stops once test accuracy stays
within 1% of the full-data model's for 5 prefixes), so ``--tmc`` is 0 by default. LOO is
restricted to ``--loo`` points (0..k-1); its mislabel figures are over those points only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from datamodels.api import estimate, evaluate, methods, train
from datamodels.config import Config, config_from_dict, load_config
from datamodels.errors import DatamodelsError
from datamodels.metrics.mislabel import mislabel_detection
from datamodels.orchestrate.executor import init_ray
from datamodels.stages.estimate import GRADIENT_METHODS
from datamodels.store import Run

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"
METHODS = methods()


def bench_config(args: argparse.Namespace) -> Config:
    plans = [
        {"name": "train", "kind": "alpha", "alpha": 0.5, "count": args.models},
        {"name": "eval", "kind": "alpha", "alpha": 0.5, "count": args.eval_models},
        {"name": "grid", "kind": "alpha_grid", "levels": args.levels, "count": args.per_level},
    ]
    if args.tmc:
        plans.append({"name": "walks", "kind": "tmc", "count": args.tmc})
    if args.loo:
        plans.append({"name": "loo", "kind": "loo", "points": list(range(args.loo))})
    base = load_config(CONFIG, ["dataset.flip_fraction=0.1", "dataset.eval_train=true", *args.set])
    tree = base.model_dump(mode="json")
    tree["name"] = "bench_estimators"
    tree["plans"] = plans
    return config_from_dict(tree)


def models_read(config: Config, run: Run, method: str) -> int:
    kind = {
        "shapley": "alpha_grid",
        "beta_shapley": "alpha_grid",
        "tmc_shapley": "tmc",
        "loo": "loo",
    }.get(method)
    if method == "knn_shapley":
        return 0
    if kind is None:
        return len(run.model_ids(plan=config.estimate.plan))
    plan = next(p.name for p in config.plans if p.kind == kind)
    return len(run.model_ids(plan=plan))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, default=2000, help="alpha = 1/2 models (plan train)")
    parser.add_argument(
        "--eval-models", type=int, default=200, help="held-out alpha = 1/2 models for LDS"
    )
    parser.add_argument("--levels", type=int, default=8, help="Owen grid levels (plan grid)")
    parser.add_argument("--per-level", type=int, default=100, help="models per Owen grid level")
    parser.add_argument("--tmc", type=int, default=0, help="TMC permutation walks (0: no tmc plan)")
    parser.add_argument(
        "--loo", type=int, default=50, help="LOO on training points 0..k-1 (0: no loo plan)"
    )
    parser.add_argument(
        "--run", default="runs/bench_estimators", help="run directory (reused when present)"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated methods to estimate"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="extra config override, e.g. train.epochs=20"
    )
    args = parser.parse_args()

    config = bench_config(args)
    wall = time.perf_counter()
    init_ray()
    start = time.perf_counter()
    summary = train(config, args.run, show_progress=False)
    train_seconds = time.perf_counter() - start
    run = Run(args.run)
    examples = run.examples()
    train_rows = examples[examples["train_position"].notna()].sort_values("train_position")
    flipped = (train_rows["label"] != train_rows["original_label"]).to_numpy()
    print(
        f"run {args.run}: {run.sizes()[0]} train points, {int(flipped.sum())} flipped labels; "
        f"trained {summary.trained} new models in {train_seconds:.0f}s "
        f"({summary.already_done} units already done)"
    )

    rows = []
    for method in args.methods.split(","):
        if method == "tmc_shapley" and not args.tmc or method == "loo" and not args.loo:
            continue
        start = time.perf_counter()
        try:
            if method in GRADIENT_METHODS:
                used = estimate(config, args.run, method, show_progress=False)["models"]
            else:
                estimate(config, run, method)
                used = models_read(config, run, method)
        except DatamodelsError as err:
            print(f"{method}: skipped ({err})")
            continue
        rows.append({"method": method, "seconds": time.perf_counter() - start, "models": used})

    self_scores = run.self_scores()
    lds = {}
    if run.score_methods():
        frame = evaluate(config, run)
        lds = frame[frame["metric"] == "lds"].set_index("method")["value"].to_dict()
    for row in rows:
        method = row["method"]
        row["found@0.2"] = row["auc"] = np.nan
        row["note"] = ""
        if method in self_scores:
            scores, is_flipped = self_scores[method], flipped
            if method == "loo":
                scores, is_flipped = scores[: args.loo], flipped[: args.loo]
                row["note"] = f"over its {args.loo} points ({int(is_flipped.sum())} flipped)"
            if is_flipped.any():
                result = mislabel_detection(scores, is_flipped)
                row["found@0.2"], row["auc"] = result.found_at(0.2), result.auc
        else:
            row["note"] = "no self scores"
        row["lds"] = lds.get(method, np.nan)

    table = pd.DataFrame(
        rows, columns=["method", "seconds", "models", "found@0.2", "auc", "lds", "note"]
    )
    print(
        f"digits, 10% flipped labels, {config.model.arch} ({config.train.epochs} epochs); "
        "chance: found@0.2 = 0.2, auc = 0.5; "
        f"LDS on {args.eval_models} held-out models, test targets"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    if table["found@0.2"].notna().any():
        best = table.loc[table["found@0.2"].idxmax()]
        print(f"best at 20% inspected: {best['method']} {best['found@0.2']:.3f} (target >= 0.8)")
    print(f"whole benchmark {time.perf_counter() - wall:.0f}s")


if __name__ == "__main__":
    main()
