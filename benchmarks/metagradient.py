"""Metagradients on the digits MLP (configs/digits.yaml's model and recipe): single-model LDS
per drop fraction and the usual (multi-seed) LDS beside HyDRA, influence, TracIn and TRAK on
the same model and datamodels fitted on ``--train-models`` α = ½ models, and the cost per 100
targets against one training run (for datamodels: training its models plus the fit), in the
same process, and the metagradient's cost per target block before (autograd products) and
after (hand-written batched matmuls), with the checkpointed replay beside it.

    python benchmarks/metagradient.py                      # 100 targets, 20 models a fraction
    python benchmarks/metagradient.py --targets 50 --count 10 --eval-models 100
    python benchmarks/metagradient.py --float64   # ground-truth models trained in float64
    python benchmarks/metagradient.py --set train.lr=0.02   # a smoother run
    python benchmarks/metagradient.py --config configs/digits_single_model.yaml  # softplus

``--config``: the model and recipe of another config (default ``configs/digits.yaml``); the
plans are always the benchmark's own.

Single-model setting (Ilyas & Engstrom 2025): one seed, one batch order over the full
training set; each model drops a random fraction of the points by loss weight 0
(``train_mlp_batched(example_weights=...)``, what a ``single_model`` plan trains). Every
estimator scores the full-data model (mask 0 of the plan); TracIn uses its epoch-end
iterates with each epoch's mean lr. Usual LDS: held-out α = 0.5 subsets, one fresh seed
each (the ``eval`` plan's setting). Costs: wall seconds on this machine's threads (1 by
default) and the peak resident memory of the process (``ru_maxrss``) after each step.

"One training run": one model trained alone by the batched trainer (float32, the recipe's
epochs). "Target block": the ``--targets`` targets whose metagradients one adjoint pass
carries together (a ``gradients.targets_per_task`` unit of the estimate stage). The block's
cost (the float64 replay plus the adjoint) is given in training runs, and per target against
one model of a batched training call of as many models as targets (the trainer batches
models as the adjoint batches targets).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodels import api  # noqa: E402
from datamodels.config import config_from_dict, load_config  # noqa: E402
from datamodels.gradients import Exact, influence_scores, tracin_scores  # noqa: E402
from datamodels.gradients.hydra import hydra_scores  # noqa: E402
from datamodels.gradients.metagradient import metagradient_scores, replay_mlp  # noqa: E402
from datamodels.gradients.trak import trak_scores  # noqa: E402
from datamodels.metrics.lds import lds, single_model_lds  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.plans import masks_for, plan_models, training_weights  # noqa: E402
from datamodels.regress import lasso_select, split_rows  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.trainers.batched import train_mlp_batched  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DROPS = (0.01, 0.05, 0.1, 0.25, 0.5)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--count", type=int, default=20, help="models per drop fraction")
    parser.add_argument("--eval-models", type=int, default=100, help="α = 0.5 models, usual LDS")
    parser.add_argument(
        "--train-models", type=int, default=2000, help="α = 0.5 models the datamodels are fit on"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="override, e.g. train.lr=0.02")
    parser.add_argument(
        "--config", default="configs/digits.yaml",
        help="the config whose model and recipe are measured (the plans are the benchmark's)",
    )
    parser.add_argument(
        "--float64", action="store_true",
        help="train the measured models in float64 (no float32 rounding in the ground truth)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    plans = [
        {"name": "single", "kind": "single_model", "count": args.count, "drops": list(DROPS)},
        {"name": "eval", "alpha": 0.5, "count": args.eval_models},
        {"name": "train", "alpha": 0.5, "count": args.train_models},
    ]
    base = load_config(ROOT / args.config).model_dump(mode="json")
    config = config_from_dict(
        {**base, "plans": plans, "checkpoints": {"plan": "single"}}, args.set
    )
    out = tempfile.mkdtemp(prefix="metagradient_bench_")
    api.prepare(config, out)
    data = Context().data(Run(out), config)
    n, T = data.n_train, min(args.targets, data.n_test)
    tx, ty = data.eval_x[:T], data.eval_y[:T]
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    single = planned.plan == "single"
    eval_rows, train_rows = planned.plan == "eval", planned.plan == "train"
    print(f"{args.config} (activation {config.model.activation}"
          + (f", β {config.model.softplus_beta:g}" if config.model.activation == "softplus" else "")
          + f", lr {config.train.lr:g}) {' '.join(args.set)}")
    print(f"digits MLP: n_train {n}, {T} targets, {int(single.sum())} single-model models, "
          f"{int(eval_rows.sum())} eval models, {int(train_rows.sum())} models for the "
          f"datamodels, {args.threads} thread(s)")

    start = time.perf_counter()
    order, weights = training_weights(config, planned, masks)
    measured = data
    if args.float64:
        measured = dataclasses.replace(
            data, train_x=data.train_x.double(), eval_x=data.eval_x.double()
        )
    margins, _, accuracy, _ = train_mlp_batched(
        measured, order, planned.seed, config.model, config.train, example_weights=weights
    )
    seconds = time.perf_counter() - start
    print(f"trained {len(masks)} models ({measured.train_x.dtype}) in {seconds:.1f} s; test "
          f"accuracy of the full-data model {accuracy[single][0]:.3f}, of the α = ½ eval "
          f"models {accuracy[eval_rows].mean():.3f} (mean)")
    start = time.perf_counter()
    train_mlp_batched(data, masks[:1], planned.seed[:1], config.model, config.train)
    one_run = time.perf_counter() - start
    # T models in one batched call (each its own seed and subset): the trainer's batching of
    # models is what the adjoint's batching of targets is compared with
    start = time.perf_counter()
    train_mlp_batched(data, masks[eval_rows][:T], planned.seed[eval_rows][:T], config.model,
                      config.train)
    block_run = time.perf_counter() - start

    full, seed = masks[single][0], int(planned.seed[single][0])
    costs, scores = {}, {}
    start = time.perf_counter()
    trajectory = replay_mlp(
        data.train_x, data.train_y, full, seed, config.model, config.train, data.num_classes
    )
    replay = time.perf_counter() - start
    start = time.perf_counter()
    before = metagradient_scores(
        trajectory, data.train_x, data.train_y, tx, ty, products="autograd"
    )
    autograd_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores["metagradient"] = metagradient_scores(trajectory, data.train_x, data.train_y, tx, ty)
    costs["metagradient"] = (time.perf_counter() - start, peak_mb())
    agree = float((scores["metagradient"] - before).abs().max() / before.abs().max())
    start = time.perf_counter()
    single32 = metagradient_scores(
        trajectory, data.train_x, data.train_y, tx, ty, dtype=torch.float32
    )
    float32_seconds = time.perf_counter() - start
    agree32 = float((single32 - scores["metagradient"]).abs().max()
                    / scores["metagradient"].abs().max())
    # checkpointed replay: a bound below the kept iterates (checkpoints every k steps)
    bound = trajectory.iterates.numel() * 8 / 8
    start = time.perf_counter()
    checkpointed = replay_mlp(
        data.train_x, data.train_y, full, seed, config.model, config.train, data.num_classes,
        memory_bytes=bound,
    )
    ck_replay = time.perf_counter() - start
    start = time.perf_counter()
    ck_scores = metagradient_scores(checkpointed, data.train_x, data.train_y, tx, ty)
    ck_adjoint = time.perf_counter() - start
    ck_equal = bool(torch.equal(ck_scores, scores["metagradient"]))
    start = time.perf_counter()
    scores["hydra"] = hydra_scores(trajectory, data.train_x, data.train_y, tx, ty)
    costs["hydra"] = (time.perf_counter() - start, peak_mb())
    model = trajectory.model
    start = time.perf_counter()
    scores["influence"] = influence_scores(
        model, data.train_x.double(), data.train_y, tx, ty,
        solver=Exact(config.gradients.damping),
    )
    costs["influence"] = (time.perf_counter() - start, peak_mb())
    steps = len(trajectory.lrs) // config.train.epochs
    checkpoints = [
        (
            trajectory.iterates[e * steps] if e < config.train.epochs else trajectory.final,
            float(np.mean(trajectory.lrs[(e - 1) * steps : e * steps])),
        )
        for e in range(1, config.train.epochs + 1)
    ]
    start = time.perf_counter()
    scores["tracin"] = tracin_scores(
        model, checkpoints, data.train_x.double(), data.train_y, tx, ty, utility="margin"
    )
    costs["tracin"] = (time.perf_counter() - start, peak_mb())
    start = time.perf_counter()
    scores["trak"] = trak_scores(
        [model], data.train_x.double(), data.train_y, tx, ty,
        proj_dim=config.gradients.proj_dim, seed=config.seed,
    )
    costs["trak"] = (time.perf_counter() - start, peak_mb())
    # datamodels: fitted on the α = ½ models (their training is the cost, counted below)
    start = time.perf_counter()
    split = split_rows(int(train_rows.sum()), 0.1, 0)
    fit = lasso_select(masks[train_rows], margins[train_rows][:, :T], split)
    scores["datamodels"] = torch.from_numpy(fit.weights)
    fit_seconds = time.perf_counter() - start
    # its cost for these targets: training its models (one run each) plus the fit
    costs["datamodels"] = (fit_seconds + one_run * int(train_rows.sum()), peak_mb())
    mg = costs["metagradient"][0]

    def lds_single_first(table: torch.Tensor) -> float:
        found = single_model_lds(table.double().cpu().numpy(), masks[single],
                                 margins[single][:, :T], DROPS[:1])
        return found[DROPS[0]].value

    print(f"\ncost of one target block ({T} targets; seconds):")
    print(f"  one training run (one model alone, float32 batched trainer)  {one_run:8.3f}")
    print(f"  {T} models in one batched training call ({T} runs)            {block_run:8.3f}"
          f"  ({block_run / T:.4f} a model)")
    print(f"  metagradient replay (float64, every iterate kept: "
          f"{trajectory.iterates.numel() * 8 / 2**20:.1f} MB)  {replay:8.3f}")
    print(f"  adjoint, autograd products (batched double backward; before) {autograd_seconds:8.3f}")
    print(f"  adjoint, matmul products (hand-written, batched; after)      {mg:8.3f}"
          f"  ({autograd_seconds / mg:.1f}x faster; max rel. difference {agree:.1e})")
    print(f"  adjoint, matmul products in float32 (replay float64)         {float32_seconds:8.3f}"
          f"  (max rel. difference to float64 {agree32:.1e}; single-model LDS at "
          f"{DROPS[0]:g}: {lds_single_first(single32):.3f})")
    print(f"  checkpointed (bound {bound / 2**20:.1f} MB: every {checkpointed.every} steps, "
          f"{checkpointed.stored_bytes / 2**20:.2f} MB kept): replay {ck_replay:.3f} + "
          f"adjoint {ck_adjoint:.3f} (same scores bit for bit: {ck_equal})")
    total, before_total = replay + mg, replay + autograd_seconds
    total32 = replay + float32_seconds
    print(f"  block, replay + adjoint: {total:.3f} s = {total / one_run:.0f}x one training run "
          f"(before {before_total / one_run:.0f}x); per target {total / T:.4f} s = "
          f"{total / block_run:.1f}x a model of the batched training call "
          f"(before {before_total / block_run:.1f}x; float32 adjoint "
          f"{total32 / one_run:.0f}x and {total32 / block_run:.1f}x)")
    header = " ".join(f"{f'single {d:g}':>11}" for d in DROPS)
    print(f"{'method':<14}{header} {'usual LDS':>10} {'s/100 tgt':>10} {'x 1 run':>8} "
          f"{'peak MB':>8}")
    for method, table in scores.items():
        table = table.double().cpu().numpy()
        single_lds = single_model_lds(table, masks[single], margins[single][:, :T], DROPS)
        usual = lds(table, masks[eval_rows], margins[eval_rows][:, :T]).value
        seconds, peak = costs[method]
        per_100 = seconds * 100 / T
        extra = replay * 100 / T if method in ("metagradient", "hydra") else 0.0
        cells = " ".join(f"{single_lds[d].value:>11.3f}" for d in DROPS)
        print(f"{method:<14}{cells} {usual:>10.3f} {per_100 + extra:>10.2f} "
              f"{(per_100 + extra) / one_run:>8.1f} {peak:>8.0f}")


if __name__ == "__main__":
    main()
