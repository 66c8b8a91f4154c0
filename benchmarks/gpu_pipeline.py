"""The product end to end on one device, through the run directory: ``train --shard 0/1``
(fastnet) -> ``fit`` -> ``estimate`` TRAK and TracIn -> ``evaluate``, on synthetic
CIFAR-shaped images (``datamodels.data.synthetic``; nothing downloaded).

Prints models per device-hour *through the store* (the train stage's wall time, shards
written to ``models/``; a second train call then finds every model done: resumable), the fit
time, each estimator's time, and the LDS table. Every stage runs in this process: no Ray, no
FFCV, no DuckDB. It needs torch, numpy, pyarrow, pandas, scikit-learn (with scipy), PyYAML,
rich and pydantic (a small wheel); not typer (it calls ``datamodels.api``, not the CLI).

The run directory can be prepared on one machine and carried to another (its examples are
written as the array store ``data/examples.npy``, whatever is installed; the images file
beside it is not needed once the run is prepared):

    python benchmarks/gpu_pipeline.py --prepare-only                 # CPU machine
    python benchmarks/gpu_pipeline.py --device cuda                  # GPU machine, same --out
    python benchmarks/gpu_pipeline.py --device cpu --tiny --models 24   # a smoke run on CPU

The run is made from the same config on both sides (``--models``, ``--tiny`` and ``--out``
must match), so the GPU machine finds it prepared and trains into it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

FULL = dict(n_train=10000, n_test=1000, size=32, width=64, epochs=8, batch_size=512,
            lr=11.5, eval_models=100, trak_models=10, proj_dim=2048, models_per_task=64)
TINY = dict(n_train=120, n_test=24, size=16, width=4, epochs=2, batch_size=32,
            lr=11.5, eval_models=6, trak_models=2, proj_dim=64, models_per_task=8)


def config_dict(args: argparse.Namespace, sizes: dict, npz: str) -> dict:
    """The run's config: fastnet on the synthetic images, checkpoints for TRAK and TracIn."""
    device = args.device
    return {
        "name": "gpu_pipeline",
        "seed": 0,
        "dataset": {"name": "arrays", "path": npz, "eval_train": False},
        "model": {"arch": "fastnet", "width": sizes["width"]},
        "train": {
            "epochs": sizes["epochs"], "batch_size": sizes["batch_size"], "lr": sizes["lr"],
            "momentum": 0.85, "weight_decay": 0.0153, "schedule": "airbench",
            "label_smoothing": 0.2, "tta": 0,
        },
        "plans": [
            {"name": "train", "alpha": 0.5, "count": args.models},
            {"name": "eval", "alpha": 0.5, "count": sizes["eval_models"]},
        ],
        "checkpoints": {
            "plan": "train", "models": sizes["trak_models"], "epochs": [sizes["epochs"]],
        },
        "gradients": {
            "models": 1, "trak_models": sizes["trak_models"], "proj_dim": sizes["proj_dim"],
            "device": device, "num_gpus": 1 if device == "cuda" else 0,
        },
        "fit": {"device": device},
        "resources": {
            "device": device, "num_gpus": 1 if device == "cuda" else 0,
            "models_per_task": sizes["models_per_task"],
        },
    }


def write_images(path: Path, sizes: dict) -> None:
    """Synthetic CIFAR-shaped images as an ``arrays`` dataset (.npz of X, y, split)."""
    from datamodels.data.synthetic import synthetic_cifar  # torch: draws the images

    if path.is_file():
        return
    xtr, ytr = synthetic_cifar(sizes["n_train"], seed=1, size=sizes["size"])
    xte, yte = synthetic_cifar(sizes["n_test"], seed=2, size=sizes["size"])
    split = np.array(["train"] * len(ytr) + ["test"] * len(yte))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=np.concatenate([xtr, xte]), y=np.concatenate([ytr, yte]), split=split)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--models", type=int, default=1000, help="models of the train plan")
    parser.add_argument("--out", default="runs/gpu_pipeline", help="the run directory")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the images and prepare the run, then stop (no device needed)")
    parser.add_argument("--tiny", action="store_true", help="a small problem (CPU smoke run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = TINY if args.tiny else FULL
    # set here, not at import, so importing build_parser changes nothing around it
    os.environ["DATAMODELS_DATA_FORMAT"] = "arrays"  # readable where FFCV is not installed
    os.environ["DATAMODELS_EXECUTOR"] = "local"  # every stage in this process

    from datamodels import api
    from datamodels.config import config_from_dict

    out = Path(args.out)
    npz = f"{args.out.rstrip('/')}-images.npz"
    if not (out / "config.yaml").is_file():  # a prepared run (carried over) needs no images
        write_images(Path(npz), sizes)
    # the config's device never enters its hash: prepare on a CPU machine, train on a GPU one
    config = config_from_dict(config_dict(args, sizes, npz))
    start = time.perf_counter()
    api.prepare(config, str(out))
    print(f"prepared {out} in {time.perf_counter() - start:.1f} s "
          f"({sizes['n_train']} train, {sizes['n_test']} test images, {sizes['size']} px; "
          f"config hash {config.hash})", flush=True)
    if args.prepare_only:
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
        return 2
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"device: {card}; torch {torch.__version__}", flush=True)

    start = time.perf_counter()
    summary = api.train(config, str(out), shard="0/1", show_progress=False)
    sync(args.device)
    t_train = time.perf_counter() - start
    again = time.perf_counter()
    resumed = api.train(config, str(out), shard="0/1", show_progress=False)
    t_again = time.perf_counter() - again
    trained = summary.trained
    rate = trained / t_train * 3600 if t_train > 0 and trained else float("nan")
    print(f"train --shard 0/1: {trained} models ({summary.already_done} already done, "
          f"{summary.failed} failed, {summary.checkpointed} checkpointed) in {t_train:.1f} s "
          f"= {rate:,.0f} models per {'GPU' if args.device == 'cuda' else 'CPU'}-hour "
          f"through the store", flush=True)
    print(f"resumed: a second train call trained {resumed.trained} models "
          f"({resumed.already_done} already done) in {t_again:.1f} s", flush=True)

    start = time.perf_counter()
    api.fit(config, str(out), show_progress=False)
    sync(args.device)
    print(f"fit: {time.perf_counter() - start:.1f} s", flush=True)

    for method in ("trak", "tracin"):
        start = time.perf_counter()
        api.estimate(config, str(out), method, show_progress=False)
        sync(args.device)
        print(f"estimate {method}: {time.perf_counter() - start:.1f} s", flush=True)

    frame = api.evaluate(config, str(out))
    print("method        metric     value  n_targets")
    for row in frame.itertuples(index=False):
        print(f"{row.method:<13} {row.metric:<8} {row.value:>7.4f}  {row.n_targets:>9}")
    return 0


if __name__ == "__main__":
    from datamodels.errors import DatamodelsError

    try:
        sys.exit(main())
    except DatamodelsError as err:  # a user's mistake: one line
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
