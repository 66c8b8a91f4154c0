"""Sparse decision layers: our elastic-net multinomial path (``regress.glm_path``) vs glm_saga.

glm_saga (Wong et al. 2021, ``pip install glm_saga`` or ``.[bench-sparse]``) is the paper
authors' solver: minibatch proximal SAGA along the same geometric λ path with warm starts.
Both solve the same problem on the same standardised features at the same λ values (glm_saga's
own grid, handed to ours):

    (1/n) Σ CE(x_i W + b, y_i) + λ (α ||W||_1 + (1 − α)/2 ||W||²)

Printed per feature set: per λ the objective of each (float64, our formula, on the fitting
rows), their relative difference ``(ours − glm_saga) / glm_saga`` (negative = ours lower),
features per class, test accuracy of each; then total wall time of each and the ratio.

Feature sets: ``digits`` — the penultimate features (64 hidden units) of a digits MLP trained
with configs/digits.yaml's model and recipe on the whole train split (made in a temporary run,
or ``--run`` for a run with checkpoints); ``synthetic`` — ReLU features of a Gaussian class
mixture, ``--n`` × ``--d``, 10 classes.

    python benchmarks/sparse_layer.py                       # both sets, one CPU thread
    python benchmarks/sparse_layer.py --sets synthetic --n 20000 --d 512 --k 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from datamodels.regress.glm import elastic_net_objective, glm_path, standardise

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"


def digits_features(run_path: str | None) -> tuple[np.ndarray, ...]:
    """(train_f, train_y, test_f, test_y) of a checkpointed digits MLP."""
    from datamodels import api
    from datamodels.config import config_from_dict
    from datamodels.gradients.checkpointed import functional_model
    from datamodels.gradients.representer import last_layer_features
    from datamodels.orchestrate.context import Context
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.stages.sparse_layer import SparseLayerStage
    from datamodels.store import Run
    from datamodels.store.checkpoints import load_checkpoint

    if run_path is None:
        raw = yaml.safe_load(CONFIG.read_text())
        raw["plans"] = [{"name": "train", "kind": "alpha", "alpha": 1.0, "count": 1}]
        raw["checkpoints"] = {"plan": "train"}
        raw["name"] = "digits_sparse_bench"
        config = config_from_dict(raw)
        run_path = str(Path(tempfile.mkdtemp()) / "run")
        api.train(config, run_path, executor=SerialExecutor(), show_progress=False)
    run = Run(run_path)
    from datamodels.stages.prepare import load_run_config

    config = load_run_config(run)
    stage = SparseLayerStage(config, run)
    data = Context().data(run, config)
    model = functional_model(config, data, load_checkpoint(run.fs, stage.checkpoint)["layers"])
    train_f, _ = last_layer_features(model, data.train_x.double())
    test_f, _ = last_layer_features(model, data.eval_x[: data.n_test].double())
    return (
        train_f.numpy(),
        data.train_y.numpy(),
        test_f.numpy(),
        data.eval_y[: data.n_test].numpy(),
    )


def synthetic_features(n: int, d: int, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """ReLU features of a Gaussian class mixture (each class shifts a random sparse set of
    directions), 80/20 train/test."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, d)) * (rng.random((classes, d)) < 0.1) * 1.5
    y = rng.integers(0, classes, size=n)
    x = np.maximum(means[y] + rng.normal(size=(n, d)) + 0.3 * rng.normal(size=(n, 1)), 0.0)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def run_glm_saga(s, y, classes, args):
    """glm_saga's path on standardised features ``s`` (float32 tensors, as it is used)."""
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga
    from torch.utils.data import DataLoader

    loader = DataLoader(
        IndexedTensorDataset(s.float(), torch.as_tensor(y)),
        batch_size=args.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    linear = torch.nn.Linear(s.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    start = time.perf_counter()
    out = glm_saga(
        linear,
        loader,
        args.saga_lr,
        args.saga_epochs,
        args.alpha,
        k=args.k,
        epsilon=args.eps,
        tol=args.saga_tol,
        n_ex=len(y),
        n_classes=classes,
        do_zero=False,
        verbose=None,
    )
    seconds = time.perf_counter() - start
    lams = np.array([float(p["lam"]) for p in out["path"]])
    thetas = [torch.cat([p["weight"].T.double(), p["bias"].double()[None]], 0) for p in out["path"]]
    return lams, thetas, seconds


def compare(name: str, train_f, train_y, test_f, test_y, args) -> None:
    import contextlib
    import io

    classes = int(train_y.max()) + 1
    s, mean, scale = standardise(torch.as_tensor(train_f, dtype=torch.float64))
    st = (torch.as_tensor(test_f, dtype=torch.float64) - mean) / scale
    with contextlib.redirect_stdout(io.StringIO()):  # glm_saga prints a line per λ
        lams, theirs, saga_seconds = run_glm_saga(s, train_y, classes, args)
    start = time.perf_counter()
    ours = glm_path(s, train_y, alpha=args.alpha, lams=lams, standardize=False, tol=args.tol)
    our_seconds = time.perf_counter() - start

    onehot = torch.nn.functional.one_hot(torch.as_tensor(train_y), classes).double()
    test_y = np.asarray(test_y)
    print(
        f"\n== {name}: n_train={len(train_y)}, features={s.shape[1]}, classes={classes}, "
        f"alpha={args.alpha}, {len(lams)} λ from {lams[0]:.4g} to {lams[-1]:.4g}"
    )
    print(
        f"{'k':>3} {'lam':>10} {'obj ours':>12} {'obj saga':>12} {'rel diff':>10} "
        f"{'feat/cls ours':>13} {'feat/cls saga':>13} {'test acc ours':>13} {'test acc saga':>13}"
    )
    rel = []
    for k, lam in enumerate(lams):
        our_theta = torch.cat(
            [torch.as_tensor(ours.coef[k]), torch.as_tensor(ours.intercept[k])[None]]
        )
        o = elastic_net_objective(s, onehot, our_theta, lam, args.alpha)
        t = elastic_net_objective(s, onehot, theirs[k], lam, args.alpha)
        rel.append((o - t) / t)
        acc_o = ((st @ our_theta[:-1] + our_theta[-1]).argmax(1).numpy() == test_y).mean()
        acc_t = ((st @ theirs[k][:-1] + theirs[k][-1]).argmax(1).numpy() == test_y).mean()
        # glm_saga reports nonzeros as |w| > 1e-5; count both that way
        f_o = (our_theta[:-1].abs() > 1e-5).sum(0).double().mean().item()
        f_t = (theirs[k][:-1].abs() > 1e-5).sum(0).double().mean().item()
        if k % max(1, len(lams) // args.rows) == 0 or k == len(lams) - 1:
            print(
                f"{k:>3} {lam:>10.4g} {o:>12.6f} {t:>12.6f} {rel[-1]:>+10.2e} "
                f"{f_o:>13.1f} {f_t:>13.1f} {acc_o:>13.4f} {acc_t:>13.4f}"
            )
    rel = np.array(rel)
    print(
        f"relative objective difference (ours − glm_saga)/glm_saga: max {rel.max():+.2e}, "
        f"min {rel.min():+.2e}, median {np.median(rel):+.2e}; λ where ours is higher by "
        f"> 1e-4: {int((rel > 1e-4).sum())} of {len(rel)}"
    )
    print(
        f"our KKT violation: max {ours.kkt.max():.1e} (tol {args.tol:g}); "
        f"iterations {int(ours.iterations.sum())}"
    )
    print(
        f"time: glm_saga {saga_seconds:.2f} s, ours {our_seconds:.2f} s, "
        f"ratio glm_saga/ours {saga_seconds / our_seconds:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="digits,synthetic")
    parser.add_argument("--run", default=None, help="a run with checkpoints (digits set)")
    parser.add_argument("--alpha", type=float, default=0.99)
    parser.add_argument("--k", type=int, default=100, help="λ values on the path")
    parser.add_argument("--eps", type=float, default=1e-3, help="smallest λ / λ_max")
    parser.add_argument("--tol", type=float, default=1e-6, help="our relative KKT tolerance")
    parser.add_argument("--n", type=int, default=10000, help="synthetic examples")
    parser.add_argument("--d", type=int, default=256, help="synthetic features")
    parser.add_argument("--saga-lr", type=float, default=0.1)
    parser.add_argument("--saga-epochs", type=int, default=2000)
    parser.add_argument("--saga-tol", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=12, help="λ rows printed per set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch threads {torch.get_num_threads()}; glm_saga: lr {args.saga_lr}, "
        f"batch {args.batch_size}, at most {args.saga_epochs} epochs per λ, tol {args.saga_tol}"
    )
    for name in args.sets.split(","):
        if name == "digits":
            compare("digits MLP penultimate features", *digits_features(args.run), args)
        elif name == "synthetic":
            compare(f"synthetic {args.n}x{args.d}", *synthetic_features(args.n, args.d), args)
        else:
            raise SystemExit(f"unknown set {name!r}; choose digits, synthetic")


if __name__ == "__main__":
    main()
