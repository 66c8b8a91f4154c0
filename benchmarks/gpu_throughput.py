"""GPU throughput of the fastnet trainer: α = ½ models per GPU-hour and their test accuracy.

Trains ``--models`` models on random α-subsets of a CIFAR-shaped training set through the
real trainer (``datamodels.trainers.api.train_batch``, ``model.arch: fastnet``) for each K in
``--ks`` (models per pass of one grouped network), and, in the same run on the same data,
GPU and subsets, the ``airbench`` package's own trainer (``airbench.train94``, one model at a
time; ``pip install airbench``, the ``bench`` extra). Every figure excludes a warm-up
(cuDNN autotuning, compilation) and is timed with the device synchronised.

Data: ``--cifar PATH`` reads the real CIFAR-10 python archive (``cifar-10-python.tar.gz`` or
its extracted folder); otherwise synthetic CIFAR-shaped images with learnable class structure
(``datamodels.data.synthetic``) are generated, since nothing can be downloaded here.
``--full N`` also trains N models on the whole training set (the recipe's accuracy).

    python benchmarks/gpu_throughput.py                         # synthetic, K = 1, 4, 8
    python benchmarks/gpu_throughput.py --cifar ~/data/cifar-10-python.tar.gz --full 4
    python benchmarks/gpu_throughput.py --device cpu --n-train 512 --n-test 256 --width 8 \\
        --models 4 --ks 1,2 --epochs 2 --airbench 0                 # a smoke run on CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from datamodels.config import Config
from datamodels.data.synthetic import synthetic_cifar
from datamodels.trainers import grouped
from datamodels.trainers.api import train_batch
from datamodels.trainers.data import TrainData, _stats


def load_images(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    if args.cifar:
        from datamodels.config import DatasetConfig
        from datamodels.data.sources import load_cifar10_dataset

        ds = load_cifar10_dataset(DatasetConfig(name="cifar10", path=args.cifar))
        train, test = np.flatnonzero(~ds.is_test), np.flatnonzero(ds.is_test)
        x, y = ds.features, ds.labels
        tr, te = train[: args.n_train], test[: args.n_test]
        return x[tr], y[tr], x[te], y[te], "CIFAR-10"
    xtr, ytr = synthetic_cifar(args.n_train, seed=1)
    xte, yte = synthetic_cifar(args.n_test, seed=2)
    return xtr, ytr, xte, yte, "synthetic CIFAR-shaped"


def train_data(xtr, ytr, xte, yte, device) -> TrainData:
    mean, std = _stats(xtr)

    def norm(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std

    data = TrainData(
        norm(xtr), torch.from_numpy(ytr).long(), norm(xte), torch.from_numpy(yte).long(),
        len(yte), 10, np.arange(len(ytr)), "", mean, std,
    )
    return data.to(device)


def config(args, K: int, precision: str | None = None, **resources) -> Config:
    return Config.model_validate({
        "model": {"arch": "fastnet", "width": args.width},
        "train": {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": 11.5, "momentum": 0.85,
            "weight_decay": 0.0153, "schedule": "airbench", "label_smoothing": 0.2, "tta": 2,
            "precision": precision or args.precision,
        },
        "resources": {"models_per_pass": K, "compile": args.compile} | resources,
    })


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(
    data, masks, seeds, args, K: int, mode: str = "grouped", precision: str | None = None
) -> tuple[float, np.ndarray]:
    grouped._TRAINERS.clear()  # free the previous variant's networks and graphs
    if args.device == "cuda":
        torch.cuda.empty_cache()
    cfg = config(args, K, precision, pass_mode=mode)
    train_batch(masks[:K], seeds[:K] + 10**6, data, cfg)  # warm-up pass (autotune, compile)
    sync(args.device)
    start = time.perf_counter()
    outcome = train_batch(masks, seeds, data, cfg)
    sync(args.device)
    seconds = time.perf_counter() - start
    if outcome.failed.any():
        print(f"  K={K}: {int(outcome.failed.sum())} models failed", file=sys.stderr)
    return seconds / len(seeds), outcome.eval_accuracy


def check_graphs(data, masks, seeds, args, K: int) -> str:
    """The same K models stepped by CUDA-graph replays and eagerly: max margin difference."""
    graphed = train_batch(masks[:K], seeds[:K], data, config(args, K))
    eager = train_batch(masks[:K], seeds[:K], data, config(args, K, cuda_graphs=False))
    diff = np.abs(graphed.margins - eager.margins).max()
    return (
        f"CUDA graph vs eager, K={K}: max |margin diff| {diff:.2e} "
        f"(margins up to {np.abs(eager.margins).max():.1f}; bf16 autocast)"
    )


def profile(data, masks, seeds, args, K: int) -> None:
    """Where one pass of K models spends its time (torch.profiler, after a warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = config(args, K)
    train_batch(masks[:K], seeds[:K], data, cfg)
    sync(args.device)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        train_batch(masks[:K], seeds[:K], data, cfg)
        sync(args.device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in events) / 1e6
    print(f"profile K={K}: wall {wall:.2f} s, GPU busy {gpu:.2f} s ({100 * gpu / wall:.0f}%)")
    print(events.table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


def run_airbench(xtr, ytr, xte, yte, masks, args) -> tuple[float, np.ndarray]:
    """airbench94's own trainer (its CifarLoader over our arrays, its defaults), one model per
    subset, timed with its test-set logits at TTA level 2 (a datamodels run records every
    model's margins, so both sides include that pass)."""
    import airbench

    work = Path(tempfile.mkdtemp(prefix="airbench-"))
    (work / "cifar10").mkdir()
    for name, x, y in (("train.pt", xtr, ytr), ("test.pt", xte, yte)):
        torch.save(
            {"images": torch.from_numpy(x), "labels": torch.from_numpy(y),
             "classes": [str(c) for c in range(10)]},
            work / "cifar10" / name,
        )
    os.chdir(work)
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)

    def loader(mask):
        rows = torch.from_numpy(np.flatnonzero(mask)).cuda()
        train = airbench.CifarLoader(
            "cifar10", train=True, batch_size=1024, aug={"flip": True, "translate": 2},
            altflip=True,
        )
        train.images, train.labels = train.images[rows], train.labels[rows]
        return train

    airbench.train94(loader(masks[0]), verbose=False)  # warm-up
    torch.cuda.synchronize()
    accuracy, seconds = [], 0.0
    for mask in masks[: args.airbench]:
        train = loader(mask)
        torch.cuda.synchronize()
        start = time.perf_counter()
        net = airbench.train94(train, verbose=False)
        logits = airbench.infer(net, test_loader, tta_level=2)
        torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        accuracy.append((logits.argmax(1) == test_loader.labels).float().mean().item())
    return seconds / max(args.airbench, 1), np.array(accuracy)


def row(name: str, K: str, per_model: float, acc: np.ndarray, base: float | None) -> str:
    ratio = f"{base / per_model:5.2f}x" if base else "    -"
    return (
        f"| {name:<22} | {K:>3} | {len(acc):>6} | {per_model:8.3f} | {3600 / per_model:>9,.0f} | "
        f"{100 * acc.mean():6.2f} ± {100 * acc.std():4.2f} | {ratio} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cifar", help="CIFAR-10 python archive or folder (default: synthetic)")
    parser.add_argument("--n-train", type=int, default=50_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--models", type=int, default=16, help="timed models per K")
    parser.add_argument("--ks", default="1,4,8", help="models per pass to measure (grouped)")
    parser.add_argument(
        "--streams", default="", help="models per pass to measure as one network per model on "
        "CUDA streams (pass_mode streams)",
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--precision", default="auto", help="train.precision of every variant")
    parser.add_argument(
        "--try-precisions", default="",
        help="e.g. bf16,fp16: time the first K in each, then use the fastest for the rest",
    )
    parser.add_argument("--airbench", type=int, default=8, help="airbench models (0: skip)")
    parser.add_argument("--full", type=int, default=0, help="also train N full-data models")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", type=int, default=0, help="profile one pass of K models")
    parser.add_argument(
        "--check-graphs", type=int, default=0, help="compare graph and eager steps at K"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")

    t0 = time.perf_counter()
    xtr, ytr, xte, yte, source = load_images(args)
    data = train_data(xtr, ytr, xte, yte, args.device)
    print(
        f"data: {source}, {len(ytr):,} train / {len(yte):,} test images "
        f"({time.perf_counter() - t0:.1f} s); alpha={args.alpha}, {args.epochs} epochs, "
        f"batch {args.batch_size}, width {args.width}, TTA 2, compile={args.compile}"
    )
    rng = np.random.default_rng(args.seed)
    masks = rng.random((args.models, len(ytr))) < args.alpha
    seeds = np.arange(args.models, dtype=np.int64)

    if args.check_graphs and args.device == "cuda":
        print(check_graphs(data, masks, seeds, args, args.check_graphs), flush=True)
    if args.profile:
        profile(data, masks, seeds, args, args.profile)
    results: list[tuple[str, str, float, np.ndarray]] = []
    if args.airbench and args.device == "cuda":
        per_model, acc = run_airbench(xtr, ytr, xte, yte, masks, args)
        results.append(("airbench94 (package)", "1", per_model, acc))
        print(f"  airbench: {per_model:.3f} s/model, accuracy {acc.mean():.4f}", flush=True)
    ks = [int(k) for k in args.ks.split(",") if k]
    if args.try_precisions:
        timed = []
        for precision in args.try_precisions.split(","):
            per_model, acc = run_ours(data, masks, seeds, args, ks[0], "grouped", precision)
            results.append((f"datamodels fastnet {precision}", str(ks[0]), per_model, acc))
            print(f"  fastnet {precision} K={ks[0]}: {per_model:.3f} s/model, accuracy "
                  f"{acc.mean():.4f}", flush=True)
            timed.append((per_model, precision))
        args.precision = min(timed)[1]
        ks = ks[1:]
        print(f"  using precision {args.precision} for the rest", flush=True)
    variants = [(K, "grouped") for K in ks]
    variants += [(int(k), "streams") for k in args.streams.split(",") if k]
    for K, mode in variants:
        per_model, acc = run_ours(data, masks, seeds, args, K, mode)
        name = f"datamodels fastnet {args.precision}" + (" streams" if mode == "streams" else "")
        results.append((name, str(K), per_model, acc))
        print(f"  {name} K={K}: {per_model:.3f} s/model, accuracy {acc.mean():.4f}", flush=True)
    if args.full:
        full = np.ones((args.full, len(ytr)), bool)
        per_model, acc = run_ours(data, full, np.arange(args.full) + 500, args, args.full)
        results.append(("fastnet, full train set", str(args.full), per_model, acc))

    base = results[0][2] if results[0][0].startswith("airbench") else None
    print()
    print(
        "| trainer                | K   | models | s/model  | models/h  | test accuracy %  "
        "| vs airbench |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, K, per_model, acc in results:
        print(row(name, K, per_model, acc, base))


if __name__ == "__main__":
    main()
