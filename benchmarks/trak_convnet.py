"""TRAK on a conv net through the real pipeline: seconds per 1,000 training points and LDS
against the datamodels of the same run.

    python benchmarks/trak_convnet.py --quick                      # CPU, a few minutes
    python benchmarks/trak_convnet.py --device cuda                # one GPU, resnet9
    python benchmarks/trak_convnet.py --device cuda --arch fastnet --width 32
    python benchmarks/trak_convnet.py --device cuda --set train.epochs=12 --train-models 500

Synthetic CIFAR-shaped data (uint8 [N, S, S, 3]: a smooth random template per class plus
noise, so models learn and disagree) is written as an ``arrays`` .npz; the config is built
here. Then ``datamodels.api`` runs prepare → train (plan ``train`` for the datamodels, plan
``eval`` held out for LDS, checkpoints of the first ``--trak-models`` models of ``train``)
→ fit → estimate trak → evaluate, on one run directory, as ``datamodels run`` would (Ray
tasks, or ``--executor serial`` in this process; ``--device cuda`` gives training, fit and
the gradient tasks one GPU each).

Printed figures, all from this run:

* ``stage``: wall time of ``estimate -m trak`` (Ray tasks, parts, reduction: featurise every
  training point and target under each model, kernels, scores) per 1,000 training points
  and per 1,000 (model, training point) pairs;
* ``featurise``: in this process, warm, one model: per-example gradients (``vmap(grad)``
  chunks) + the block-regenerated projection, per 1,000 training points; beside it the same
  with a dense float32 [P, k] projection held in memory (the baseline, when it fits in
  ``--dense-limit-gb``), as a ratio;
* LDS of trak and of datamodels on the held-out ``eval`` models (``evaluation.parquet``).
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
from datamodels.config import config_from_dict  # noqa: E402
from datamodels.gradients.checkpointed import functional_model, projection_precision  # noqa: E402
from datamodels.gradients.grads import per_example_grads  # noqa: E402
from datamodels.gradients.trak import model_projection, trak_features  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index  # noqa: E402

QUICK = dict(
    image_size=16, n_train=120, n_test=24, width=4, epochs=3, train_models=48, eval_models=12,
    trak_models=3, proj_dim=256,
)
FULL = dict(
    image_size=32, n_train=2000, n_test=100, width=16, epochs=8, train_models=200,
    eval_models=40, trak_models=8, proj_dim=2048,
)


def synthetic_images(
    path: Path, n_train: int, n_test: int, size: int, classes: int = 10, seed: int = 0
) -> None:
    """uint8 [N, size, size, 3]: per class a smooth random template (upsampled 4×4 noise),
    per image that template at a random contrast plus pixel noise."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    coarse = torch.from_numpy(rng.normal(size=(classes, 3, 4, 4))).float()
    templates = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    labels = rng.integers(0, classes, n)
    contrast = rng.uniform(0.5, 1.5, (n, 1, 1, 1))
    noise = rng.normal(size=(n, 3, size, size))
    images = templates.numpy()[labels] * contrast + 1.5 * noise
    images = np.clip(128 + 40 * images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    split = np.array(["train"] * n_train + ["test"] * n_test)
    np.savez(path, X=images, y=labels, split=split)


# resnet9: SGD with nesterov; fastnet: the airbench recipe of configs/cifar10_fast.yaml (lr and
# weight decay per 1,024 examples), in smaller batches for the smaller subsets
RECIPES = {
    "resnet9": {"batch_size": 64, "lr": 0.05, "weight_decay": 5e-4, "schedule": "triangle"},
    "fastnet": {"batch_size": 256, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
                "schedule": "airbench", "label_smoothing": 0.2},
}


def build_config(args, data_path: Path):
    gpus = 1 if args.device == "cuda" else 0
    spec = {
        "name": f"trak_{args.arch}",
        "dataset": {"name": "arrays", "path": str(data_path), "eval_train": False},
        "model": {"arch": args.arch, "width": args.width},
        "train": {"epochs": args.epochs, **RECIPES.get(args.arch, RECIPES["resnet9"])},
        "plans": [
            {"name": "train", "alpha": 0.5, "count": args.train_models},
            {"name": "eval", "alpha": 0.5, "count": args.eval_models},
        ],
        "checkpoints": {"plan": "train", "models": args.trak_models},
        "resources": {"device": args.device, "num_gpus": gpus},
        "fit": {"device": args.device},
        "gradients": {
            "trak_models": args.trak_models, "proj_dim": args.proj_dim, "num_gpus": gpus,
            "chunk_size": args.chunk_size, "targets_per_task": 4096, "train_per_task": 65536,
        },
    }
    return config_from_dict(spec, args.set)


def timed(fn, repeats: int = 2):
    """(result, best wall seconds of ``repeats`` calls), CUDA synchronised."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def featurise(config, run: Run, args) -> None:
    """One model's TRAK features in this process: block-regenerated projection vs a dense
    float32 matrix (the baseline), per 1,000 training points."""
    device = "cuda" if args.device == "cuda" else "cpu"
    data = Context().data(run, config, device)
    index = read_checkpoint_index(run.fs)
    path = index[index.model_id == index.model_id.min()].sort_values("epoch").path.iloc[-1]
    model = functional_model(config, data, load_checkpoint(run.fs, path)["layers"])
    precision = projection_precision(config, device)
    projection = model_projection(model, args.proj_dim, config.seed, precision=precision)
    x, y = data.train_x, data.train_y
    chunk = config.gradients.chunk_size
    trak_features(model, x[:chunk], y[:chunk], projection, "trak", chunk)  # warm-up
    _, blocked = timed(lambda: trak_features(model, x, y, projection, "trak", chunk))
    per_1000 = 1000 / len(x)
    print(
        f"featurise  {model.num_params:,} parameters, k={args.proj_dim}, {precision} "
        f"projection blocks of {projection.rows} rows on {device}: "
        f"{blocked * per_1000:.3f} s per 1,000 training points"
    )
    def gradients(s: int) -> torch.Tensor:
        return per_example_grads(
            model, x[s : s + chunk], y[s : s + chunk], "trak", chunk_size=chunk
        )

    _, grads_only = timed(lambda: [gradients(s) for s in range(0, len(x), chunk)])
    print(f"           of which per-example gradients alone: {grads_only * per_1000:.3f} s")
    dense_gb = model.num_params * args.proj_dim * 4 / 1e9
    if dense_gb > args.dense_limit_gb:
        print(f"           dense float32 [P, k] baseline skipped: it would hold {dense_gb:.1f} GB")
        return
    low = torch.bfloat16 if precision == "bf16" else torch.float32
    held = projection.dense(device).to(low)  # the same numbers, held whole

    def dense_features():
        return torch.cat(
            [(gradients(s).to(low) @ held).double() for s in range(0, len(x), chunk)]
        )

    _, dense = timed(dense_features)
    print(
        f"           dense [P, k] baseline ({dense_gb:.2f} GB held): "
        f"{dense * per_1000:.3f} s per 1,000; blocked / dense = {blocked / dense:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU check")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--arch", default="resnet9", help="resnet9 or fastnet")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    for name, value in FULL.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} ({QUICK[name]} with --quick)")
    parser.add_argument("--chunk-size", type=int, default=None, help="gradients.chunk_size")
    parser.add_argument("--dense-limit-gb", type=float, default=8.0)
    parser.add_argument("--set", action="append", default=[], help="dotted config override")
    parser.add_argument(
        "--executor", choices=["ray", "serial"], default="ray",
        help="ray: tasks on a local (or RAY_ADDRESS) cluster; serial: in this process",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.chunk_size is None:
        args.chunk_size = 64 if args.device == "cpu" else 256
    torch.set_num_threads(max(1, torch.get_num_threads()))

    root = Path(args.out or tempfile.mkdtemp(prefix="trak_convnet_"))
    root.mkdir(parents=True, exist_ok=True)
    data_path = root / "images.npz"
    if not data_path.exists():
        synthetic_images(data_path, args.n_train, args.n_test, args.image_size)
    config = build_config(args, data_path)
    uri = str(root / "run")
    print(
        f"run {uri}: {args.arch} width {args.width}, {args.n_train} train / {args.n_test} test "
        f"{args.image_size}x{args.image_size} images, {args.train_models} + {args.eval_models} "
        f"models, TRAK on {args.trak_models} models, k={args.proj_dim}, device {args.device}"
    )
    executor = None
    if args.executor == "serial":
        from datamodels.orchestrate.executor import SerialExecutor

        executor = SerialExecutor()
    start = time.perf_counter()
    summary = api.train(config, uri, executor=executor, show_progress=False)
    print(f"train      {summary.trained} models, {summary.checkpointed} checkpointed, "
          f"{time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    api.fit(config, uri, show_progress=False)
    print(f"fit        datamodels in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    written = api.estimate(config, uri, "trak", executor=executor, show_progress=False)
    seconds = time.perf_counter() - start
    n, models = args.n_train, args.trak_models
    if written:
        print(
            f"stage      estimate -m trak: {seconds:.1f} s for {models} models x {n} training "
            f"points = {seconds / (n / 1000):.2f} s per 1,000 training points "
            f"({seconds / (models * n / 1000):.2f} s per 1,000 (model, point) pairs)"
        )
    else:
        print("stage      trak scores were up to date (delete scores/trak.parquet to re-time)")
    featurise(config, Run(uri), args)
    table = api.evaluate(config, uri)
    lds = table[table.metric == "lds"].set_index("method")["value"]
    print(f"LDS        trak {lds.get('trak', float('nan')):.3f}   "
          f"datamodels {lds.get('datamodels', float('nan')):.3f}   "
          f"(held-out plan eval, {args.eval_models} models)")


if __name__ == "__main__":
    main()
