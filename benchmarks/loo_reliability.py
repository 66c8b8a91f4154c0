"""How far the digits default's leave-one-out effects can be trusted: their split-half
reliability (`datamodels.metrics.loo.split_half`), paired against unpaired, and how the
left-out points are chosen.

    python benchmarks/loo_reliability.py                  # the digits default's loo plan
    python benchmarks/loo_reliability.py --choose 40      # pick 40 points (prints the list)
    python benchmarks/loo_reliability.py --run RUN        # a finished run: its loo rows

The default mode trains only the loo plan of configs/digits.yaml, twice: as written (a
``paired_loo`` plan: one seed and one batch order per replicate, the left-out point weighted
0) and as an unpaired ``loo`` plan with the same points and seeds count (every model its own
seed), and prints the split-half reliability of both (Pearson of the effects from the even
and the odd replicates over the (point, test target) pairs; Spearman–Brown 2r/(1+r)) and
the training time of each.

``--choose P`` trains ``--pilot`` full-data models with seeds of their own (a plan called
``pilot``, so no seed of the loo plan is reused and the choice does not look at the effects
it is then judged on) and lists the P training points with the lowest mean margin on
themselves: the points the model fits least easily, whose removal moves the test margins
most. ``--run`` prints ``loo_split_half``, ``loo_split_half_sb`` and each method's
``loo_pearson`` / ``loo_spearman`` from a run's ``evaluation.parquet``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodels import api  # noqa: E402
from datamodels import estimators as est  # noqa: E402
from datamodels.config import config_from_dict, load_config  # noqa: E402
from datamodels.estimators.loo import left_out_points, replicate_keys  # noqa: E402
from datamodels.metrics.loo import split_half  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.plans import plan_models  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.store.positions import eval_positions  # noqa: E402
from datamodels.trainers.batched import train_mlp_batched  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def only_plan(base: dict, plan: dict) -> object:
    return config_from_dict({**base, "plans": [plan], "checkpoints": {"plan": None}})


def reliability(plan: dict, base: dict) -> tuple[object, float, int]:
    """Train ``plan`` alone in a fresh run; (split-half, seconds, models)."""
    config = only_plan(base, plan)
    out = tempfile.mkdtemp(prefix="loo_reliability_")
    api.prepare(config, out)
    start = time.perf_counter()
    api.train(config, out, shard="0/1", show_progress=False)
    seconds = time.perf_counter() - start
    run = Run(out)
    ids = run.model_ids(plan["name"])
    masks, margins = run.masks_and_margins(plan=plan["name"])
    left_out = left_out_points(masks)
    keys = replicate_keys(ids, plan_models(config, run.n_train).select_ids(ids).mask_index,
                          plan["seeds"])
    targets = eval_positions(run, config.estimate.targets)
    points = np.unique(left_out[left_out >= 0])
    _, d = est.loo_differences(left_out, keys, margins[:, targets], points, run.n_train)
    return split_half(d), seconds, len(ids)


def choose(base: dict, count: int, pilot: int) -> list[int]:
    plan = {"name": "pilot", "kind": "alpha", "alpha": 1.0, "count": 1, "seeds": pilot}
    config = only_plan(base, plan)
    out = tempfile.mkdtemp(prefix="loo_choose_")
    api.prepare(config, out)
    data = Context().data(Run(out), config)
    planned = plan_models(config, data.n_train)
    masks = np.ones((len(planned), data.n_train), bool)
    margins, *_ = train_mlp_batched(data, masks, planned.seed, config.model, config.train)
    own = margins[:, data.n_test :].mean(0)  # eval_train: eval position n_test + i is point i
    return np.argsort(own, kind="stable")[:count].tolist()  # lowest margin first


def from_run(path: str) -> None:
    table = Run(path).evaluation()
    rows = table[table["metric"].str.startswith("loo_")]
    wide = rows.pivot(index="method", columns="metric", values="value")
    print(wide.round(3).to_string())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "configs/digits.yaml"))
    parser.add_argument("--choose", type=int, default=0, help="list this many points")
    parser.add_argument("--pilot", type=int, default=8, help="full-data models for --choose")
    parser.add_argument("--points", type=int, default=0, help="first N of the plan's points")
    parser.add_argument("--seeds", type=int, default=0, help="replicates (0: the plan's)")
    parser.add_argument("--run", help="print the loo rows of a finished run's evaluation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        from_run(args.run)
        return
    base = load_config(args.config).model_dump(mode="json")
    if args.choose:
        print("points:", choose(base, args.choose, args.pilot))
        return
    plan = next(p for p in base["plans"] if p["kind"] in ("paired_loo", "loo"))
    plan = {k: plan[k] for k in ("name", "kind", "points", "seeds")}
    plan["points"] = plan["points"][: args.points or None]
    plan["seeds"] = args.seeds or plan["seeds"]
    print(f"{args.config}: plan {plan['name']!r}, {len(plan['points'])} points x "
          f"{plan['seeds']} seeds (+ the full set), test targets")
    print(f"{'kind':<11} {'models':>6} {'train s':>8} {'split-half r':>13} "
          f"{'Spearman-Brown':>15} {'rank r':>7}")
    for kind in ("paired_loo", "loo"):
        half, seconds, models = reliability({**plan, "kind": kind}, base)
        print(f"{kind:<11} {models:>6} {seconds:>8.1f} {half.pearson:>13.3f} "
              f"{half.spearman_brown:>15.3f} {half.spearman:>7.3f}")


if __name__ == "__main__":
    main()
