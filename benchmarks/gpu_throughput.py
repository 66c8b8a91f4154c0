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

Modes: ``--ks`` grouped (K models as one network with ``groups=K`` convolutions), ``--streams``
(K networks stepped on CUDA streams), ``--processes`` (P training processes sharing the
device, each training models / P of the same masks: ``benchmarks/gpu_processes.py``; ``--mps``
measures them also under a CUDA MPS daemon); CUDA graphs are on for every CUDA mode
(``resources.cuda_graphs``) and ``--compile`` adds ``torch.compile``. Each row carries the
mode's peak allocated GPU memory (per process for ``--processes``; reset between modes) and
the GPU's utilisation and memory in use sampled with ``nvidia-smi`` ("n/a" on the CPU).

    python benchmarks/gpu_throughput.py                         # synthetic, K = 1, 4, 8
    python benchmarks/gpu_throughput.py --cifar ~/data/cifar-10-python.tar.gz --full 4
    python benchmarks/gpu_throughput.py --device cpu --n-train 512 --n-test 256 --width 8 \\
        --models 4 --ks 1,2 --epochs 2 --airbench 0                 # a smoke run on CPU
    python benchmarks/gpu_throughput.py --ks 1 --processes 2,4 --mps  # P processes per GPU
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
from gpu_processes import Sampler, gib, process_rows

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
    xtr, ytr = synthetic_cifar(args.n_train, seed=1, size=args.size)
    xte, yte = synthetic_cifar(args.n_test, seed=2, size=args.size)
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


def free(device: str) -> None:
    """Frees the previous variant's networks and graphs and resets the peak-memory count."""
    grouped._TRAINERS.clear()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_ours(
    data, masks, seeds, args, K: int, mode: str = "grouped", precision: str | None = None
) -> tuple[float, np.ndarray, str, str, str]:
    """-> (s/model, accuracies, peak allocated GiB, GPU utilisation %, GPU memory used GiB)."""
    free(args.device)
    cfg = config(args, K, precision, pass_mode=mode)
    train_batch(masks[:K], seeds[:K] + 10**6, data, cfg)  # warm-up pass (autotune, compile)
    sync(args.device)
    with Sampler(args.device) as sampler:
        start = time.perf_counter()
        outcome = train_batch(masks, seeds, data, cfg)
        sync(args.device)
        seconds = time.perf_counter() - start
    if outcome.failed.any():
        print(f"  K={K}: {int(outcome.failed.sum())} models failed", file=sys.stderr)
    peak = gib(torch.cuda.max_memory_allocated() if args.device == "cuda" else None)
    return (seconds / len(seeds), outcome.eval_accuracy, peak, sampler.utilisation(),
            sampler.memory_used())


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


def run_airbench(xtr, ytr, xte, yte, masks, args) -> tuple[float, np.ndarray, str, str, str]:
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

    free(args.device)
    airbench.train94(loader(masks[0]), verbose=False)  # warm-up
    torch.cuda.synchronize()
    accuracy, seconds = [], 0.0
    with Sampler(args.device) as sampler:  # its loaders are built between the timed parts
        for mask in masks[: args.airbench]:
            train = loader(mask)
            torch.cuda.synchronize()
            start = time.perf_counter()
            net = airbench.train94(train, verbose=False)
            logits = airbench.infer(net, test_loader, tta_level=2)
            torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            accuracy.append((logits.argmax(1) == test_loader.labels).float().mean().item())
    peak = gib(torch.cuda.max_memory_allocated())
    return (seconds / max(args.airbench, 1), np.array(accuracy), peak, sampler.utilisation(),
            sampler.memory_used())


HEADER = (
    "| trainer | K | models | s/model | models/h | test accuracy % | vs airbench "
    "| peak mem GiB | GPU util % | GPU mem used GiB |\n|---|---|---|---|---|---|---|---|---|---|"
)


def row(name, K, per_model, acc, peak, util, used, base: float | None) -> str:
    ratio = f"{base / per_model:5.2f}x" if base else "    -"
    return (
        f"| {name:<22} | {K:>3} | {len(acc):>6} | {per_model:8.3f} | {3600 / per_model:>9,.0f} | "
        f"{100 * acc.mean():6.2f} ± {100 * acc.std():4.2f} | {ratio} | {peak} | {util} | "
        f"{used} |"
    )


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--processes", default="", help="process counts P to measure: P training processes "
        "sharing the device, each training models / P of the masks (e.g. 2,4,8)",
    )
    parser.add_argument("--process-k", type=int, default=1, help="models per pass in each process")
    parser.add_argument(
        "--mps", action="store_true", help="measure --processes also under a CUDA MPS daemon "
        "started (and stopped) here, where nvidia-cuda-mps-control is installed",
    )
    parser.add_argument("--size", type=int, default=32, help="synthetic image side (pixels)")
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
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
    results: list[tuple] = []
    if args.airbench and args.device == "cuda":
        measured = run_airbench(xtr, ytr, xte, yte, masks, args)
        results.append(("airbench94 (package)", "1", *measured))
        print(f"  airbench: {measured[0]:.3f} s/model, accuracy {measured[1].mean():.4f}",
              flush=True)
    ks = [int(k) for k in args.ks.split(",") if k]
    if args.try_precisions:
        timed = []
        for precision in args.try_precisions.split(","):
            measured = run_ours(data, masks, seeds, args, ks[0], "grouped", precision)
            results.append((f"datamodels fastnet {precision}", str(ks[0]), *measured))
            print(f"  fastnet {precision} K={ks[0]}: {measured[0]:.3f} s/model, accuracy "
                  f"{measured[1].mean():.4f}", flush=True)
            timed.append((measured[0], precision))
        args.precision = min(timed)[1]
        ks = ks[1:]
        print(f"  using precision {args.precision} for the rest", flush=True)
    name = f"datamodels fastnet {args.precision}"
    for K in ks:
        measured = run_ours(data, masks, seeds, args, K, "grouped")
        results.append((name, str(K), *measured))
        print(f"  {name} K={K}: {measured[0]:.3f} s/model, accuracy {measured[1].mean():.4f}, "
              f"peak {measured[2]} GiB, GPU util {measured[3]}%", flush=True)
    if args.processes:
        free(args.device)
        results += process_rows((xtr, ytr, xte, yte), masks, seeds, args, name)
    for K in [int(k) for k in args.streams.split(",") if k]:
        measured = run_ours(data, masks, seeds, args, K, "streams")
        results.append((f"{name} streams", str(K), *measured))
        print(f"  {name} streams K={K}: {measured[0]:.3f} s/model, accuracy "
              f"{measured[1].mean():.4f}, peak {measured[2]} GiB, GPU util {measured[3]}%",
              flush=True)
    if args.full:
        full = np.ones((args.full, len(ytr)), bool)
        measured = run_ours(data, full, np.arange(args.full) + 500, args, args.full)
        results.append(("fastnet, full train set", str(args.full), *measured))

    base = results[0][2] if results and results[0][0].startswith("airbench") else None
    print()
    print(HEADER)
    for result in results:
        print(row(*result, base))


if __name__ == "__main__":
    main()
