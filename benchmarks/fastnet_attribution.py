"""TRAK beside datamodels on the fast net, in one process (no Ray, no FFCV: runs where only
torch is installed): TRAK seconds per 1,000 training points and both methods' LDS.

Trains ``--train-models`` fastnet models on α = ½ subsets of synthetic CIFAR-shaped images
(``datamodels.data.synthetic``) through the real trainer (``train_batch``, K per pass),
the first ``--trak-models`` of them checkpointed, and ``--eval-models`` held-out models;
fits the datamodels (``lasso_select``), scores the same test targets with TRAK
(``gradients.trak.trak_scores`` over the checkpoints, projection regenerated block by
block), and prints the LDS of each on the held-out models (margins without test-time
augmentation, the output TRAK differentiates).

    python benchmarks/fastnet_attribution.py --device cuda
    python benchmarks/fastnet_attribution.py --quick --device cpu      # a few minutes on CPU
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from datamodels.config import Config
from datamodels.data.synthetic import synthetic_cifar
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.trak import trak_scores
from datamodels.metrics.lds import lds
from datamodels.regress import lasso_select, split_rows
from datamodels.trainers.api import train_batch
from datamodels.trainers.data import TrainData, _stats
from datamodels.trainers.outcome import CheckpointRequest

QUICK = dict(n_train=200, n_test=40, size=16, width=4, epochs=4, batch_size=32,
             train_models=120, eval_models=20, trak_models=2, proj_dim=256, lr=120.0)
FULL = dict(n_train=5000, n_test=500, size=32, width=32, epochs=8, batch_size=256,
            train_models=1000, eval_models=100, trak_models=10, proj_dim=2048, lr=40.0)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models-per-pass", type=int, default=32)
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None)
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    device = args.device

    xtr, ytr = synthetic_cifar(args.n_train, seed=1, size=args.size)
    xte, yte = synthetic_cifar(args.n_test, seed=2, size=args.size)
    mean, std = _stats(xtr)

    def norm(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std

    data = TrainData(
        norm(xtr), torch.from_numpy(ytr), norm(xte), torch.from_numpy(yte), args.n_test, 10,
        np.arange(args.n_train), "", mean, std,
    ).to(device)
    config = Config.model_validate({
        "model": {"arch": "fastnet", "width": args.width},
        "train": {
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "momentum": 0.85, "weight_decay": 0.0153, "schedule": "airbench",
            "label_smoothing": 0.2, "tta": 0,
        },
        "resources": {"models_per_pass": args.models_per_pass},
        "gradients": {"proj_dim": args.proj_dim},
    })
    rng = np.random.default_rng(0)
    n = args.n_train
    train_masks = rng.random((args.train_models, n)) < 0.5
    eval_masks = rng.random((args.eval_models, n)) < 0.5
    request = CheckpointRequest(tuple(range(args.trak_models)), (args.epochs,))

    start = time.perf_counter()
    trained = train_batch(
        train_masks, np.arange(args.train_models), data, config, checkpoints=request
    )
    held_out = train_batch(eval_masks, 10**6 + np.arange(args.eval_models), data, config)
    sync(device)
    t_train = time.perf_counter() - start
    models = args.train_models + args.eval_models
    print(
        f"trained {models} fastnet models (width {args.width}, {args.size}px, {n} train "
        f"images, α = ½, {args.epochs} epochs) in {t_train:.1f} s = {t_train / models:.3f} "
        f"s/model; test accuracy {trained.eval_accuracy.mean():.3f}; "
        f"failed {int(trained.failed.sum() + held_out.failed.sum())}",
        flush=True,
    )

    start = time.perf_counter()
    split = split_rows(args.train_models, 0.1, 0)
    fit = lasso_select(train_masks, trained.margins[:, : args.n_test], split, device=device)
    t_fit = time.perf_counter() - start
    true = held_out.margins[:, : args.n_test]
    lds_dm = lds(fit.weights, eval_masks, true).value

    snapshots = sorted(trained.snapshots, key=lambda s: s.row)
    fmodels = [functional_model(config, data, s.params) for s in snapshots]
    precision = "bf16" if device == "cuda" else "fp32"
    score = lambda: trak_scores(  # noqa: E731
        fmodels, data.train_x, data.train_y, data.eval_x[: args.n_test],
        data.eval_y[: args.n_test], proj_dim=args.proj_dim, precision=precision,
        chunk_size=256 if device == "cuda" else 64,
    )
    trak_scores(fmodels[:1], data.train_x[:64], data.train_y[:64], data.eval_x[:8],
                data.eval_y[:8], proj_dim=args.proj_dim, precision=precision)  # warm-up
    sync(device)
    start = time.perf_counter()
    scores = score().cpu().numpy()
    sync(device)
    t_trak = time.perf_counter() - start
    lds_trak = lds(scores, eval_masks, true).value
    per_k = t_trak / n * 1000
    print(
        f"datamodels: fit {t_fit:.1f} s on {args.train_models} models, LDS {lds_dm:.3f}\n"
        f"TRAK: {args.trak_models} models × {fmodels[0].num_params:,} parameters, "
        f"k = {args.proj_dim} ({precision}), {n} train + {args.n_test} target points: "
        f"{t_trak:.1f} s = {per_k:.2f} s per 1,000 training points "
        f"({per_k / args.trak_models:.3f} s per 1,000 points per model), LDS {lds_trak:.3f}"
    )


if __name__ == "__main__":
    main()
