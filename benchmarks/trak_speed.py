"""TRAK's CPU time on the digits MLP: the path before (vmap(grad) per example, float64
projection products), the path now (one batched backward per chunk, float32 products, R
drawn once per model) and traker's (``pip install traker``; its CPU ``BasicProjector``), in
one process on one thread, on the same 20 trained models, the same data and proj_dim.

    PYTHONPATH=$PWD python benchmarks/trak_speed.py [--models 20] [--proj-dim 128]
    PYTHONPATH=$PWD python benchmarks/trak_speed.py --lds /tmp/trak_lds   # the LDS curve

The 20 models are trained here (configs/digits.yaml's MLP, α = 0.5 subsets, 10 epochs);
targets are the test split. Times are CPU seconds (``time.process_time``) of computing the
[T, n] scores from the trained parameters; the agreement of the scores before and now is
their Pearson correlation (same projection: same seeds, same matrix); traker's agreement is
measured on one model with our R put in traker (a projector that applies it).
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
from datamodels.config import load_config  # noqa: E402
from datamodels.gradients.checkpointed import functional_model  # noqa: E402
from datamodels.gradients.grads import per_example_grads  # noqa: E402
from datamodels.gradients.projection import Projection  # noqa: E402
from datamodels.gradients.trak import one_minus_p, trak_scores  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.store.positions import eval_positions  # noqa: E402
from datamodels.trainers.api import train_batch  # noqa: E402
from datamodels.trainers.outcome import CheckpointRequest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trained_models(n_models: int):
    """(config, data, test targets, FunctionalModels, layer lists) of ``n_models`` MLPs."""
    config = load_config(ROOT / "configs/digits.yaml")
    out = str(Path(tempfile.mkdtemp()) / "run")
    api.prepare(config, out)
    run = Run(out)
    data = Context().data(run, config)
    rng = np.random.default_rng(0)
    masks = rng.random((n_models, data.n_train)) < 0.5
    request = CheckpointRequest(rows=tuple(range(n_models)), epochs=(config.train.epochs,))
    outcome = train_batch(masks, np.arange(n_models), data, config, checkpoints=request)
    layers = [s.params for s in sorted(outcome.snapshots, key=lambda s: s.row)]
    models = [functional_model(config, data, p) for p in layers]
    targets = torch.from_numpy(eval_positions(run, "test"))
    return config, data, targets, models, layers


def before_scores(models, train_x, train_y, target_x, target_y, proj_dim, seed, chunk=256):
    """The path before this change: vmap(grad) per example, R redrawn per chunk, float64
    products (``precision="fp64"`` reproduces them), one model at a time."""

    def features(model, x, y, projection):
        return torch.cat(
            [
                projection.project(per_example_grads(model, x[s : s + chunk], y[s : s + chunk],
                                                     "trak", chunk_size=chunk))
                for s in range(0, len(x), chunk)
            ]
        )

    attribution = torch.zeros(len(target_x), len(train_x), dtype=torch.float64)
    reweight = torch.zeros(len(train_x), dtype=torch.float64)
    for m, model in enumerate(models):
        projection = Projection(model.num_params, proj_dim, seed + m, precision="fp64")
        phi = features(model, train_x, train_y, projection)
        kernel = torch.linalg.pinv(phi.T @ phi, hermitian=True)  # [k, k]
        attribution += features(model, target_x, target_y, projection) @ kernel @ phi.T
        reweight += one_minus_p(model, train_x, train_y)
    return (attribution / len(models)) * (reweight / len(models))


def our_projector(layers, proj_dim: int, seed: int):
    """A traker projector that applies our R (``Projection``, seed + model id) after putting
    traker's gradients (nn.Linear weights [out, in]) in our layout ([in, out])."""
    from trak.projectors import AbstractProjector, ProjectionType

    shapes = [tuple(t.shape) for t in layers]
    P = sum(t.numel() for t in layers)

    class Ours(AbstractProjector):
        def __init__(self):
            super().__init__(P, proj_dim, seed, ProjectionType.normal, "cpu")

        def project(self, grads, model_id: int):
            if isinstance(grads, dict):
                parts = [g.flatten(1) for g in grads.values()]
            else:
                sizes = [int(np.prod(s)) for s in shapes]
                parts = list(torch.split(grads, sizes, dim=1))
            ordered = []
            for part, shape in zip(parts, shapes, strict=True):
                if len(shape) == 2:  # [B, out·in] -> [B, in·out]
                    part = part.reshape(-1, shape[1], shape[0]).transpose(1, 2).flatten(1)
                ordered.append(part)
            g = torch.cat(ordered, 1).double()
            return Projection(P, proj_dim, seed + model_id).project(g).float()

        def free_memory(self):
            pass

    return Ours()


def traker_scores(layers, train_x, train_y, target_x, target_y, proj_dim, seed, projector=None):
    """traker's TRAKer on the same MLPs as nn.Sequential modules (CPU, its BasicProjector
    unless ``projector`` is given)."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    def module(p):
        net = torch.nn.Sequential(torch.nn.Linear(p[0].shape[0], p[0].shape[1]), torch.nn.ReLU(),
                                  torch.nn.Linear(p[2].shape[0], p[2].shape[1]))
        with torch.no_grad():
            for layer, (w, b) in zip((net[0], net[2]), ((p[0], p[1]), (p[2], p[3])), strict=True):
                layer.weight.copy_(w.T)
                layer.bias.copy_(b)
        return net.float()

    nets = [module(p) for p in layers]
    grad_dim = sum(t.numel() for t in nets[0].parameters())
    save_dir = tempfile.mkdtemp()
    projector = projector or BasicProjector(
        grad_dim, proj_dim, seed, ProjectionType.normal, "cpu", dtype=torch.float32
    )
    traker = TRAKer(model=nets[0], task="image_classification", train_set_size=len(train_x),
                    projector=projector, proj_dim=proj_dim, save_dir=save_dir, device="cpu",
                    use_half_precision=False, logging_level=40)
    x, y, tx, ty = train_x.float(), train_y, target_x.float(), target_y
    for m, net in enumerate(nets):
        traker.load_checkpoint(net.state_dict(), model_id=m)
        for s in range(0, len(x), 256):
            batch = (x[s : s + 256], y[s : s + 256])
            traker.featurize(batch=batch, num_samples=len(batch[0]))
    traker.finalize_features()
    for m, net in enumerate(nets):
        traker.start_scoring_checkpoint("bench", net.state_dict(), model_id=m, num_targets=len(tx))
        traker.score(batch=(tx, ty), num_samples=len(tx))
    return torch.as_tensor(np.asarray(traker.finalize_scores("bench"))).T  # [T, n]


def lds_curve(uri: str) -> None:
    """TRAK's LDS on digits against proj_dim, number of models, damping and checkpoints per
    model: a run with configs/digits.yaml's settings whose ``train`` plan holds only the 20
    checkpointed models (the same masks and seeds as the default run's first 20) and whose
    ``eval`` plan is the default's 200 models, so LDS is the default run's."""
    import yaml

    from datamodels.config import config_from_dict
    from datamodels.gradients.trak import model_projection, trak_features
    from datamodels.metrics.lds import average_replicates, lds
    from datamodels.stages.prepare import load_run_config
    from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index

    raw = yaml.safe_load((ROOT / "configs/digits.yaml").read_text())
    raw["plans"] = [dict(raw["plans"][0], count=20), raw["plans"][1]]
    api.train(config_from_dict(raw), uri, show_progress=False)
    run = Run(uri)
    config = load_run_config(run)
    data = Context().data(run, config)
    index = read_checkpoint_index(run.fs)
    by_epoch = {
        e: [functional_model(config, data, load_checkpoint(run.fs, p)["layers"])
            for p in g.sort_values("model_id").path]
        for e, g in index.groupby("epoch")
    }
    last = by_epoch[max(by_epoch)]
    every = [m for e in sorted(by_epoch) for m in by_epoch[e]]  # 5 checkpoints per model
    targets = torch.from_numpy(eval_positions(run, "test"))
    masks, margins = average_replicates(*run.masks_and_margins(plan=config.evaluate.plan))
    args = (data.train_x, data.train_y, data.eval_x[targets], data.eval_y[targets])

    def value(models, k: int, relative_damping: float = 0.0) -> float:
        # damping in units of the mean diagonal of ΦᵀΦ of the first model's last checkpoint
        phi = trak_features(last[0], *args[:2], model_projection(last[0], k, config.seed))
        damping = relative_damping * float((phi * phi).sum() / k)
        scores = trak_scores(models, *args, proj_dim=k, seed=config.seed, damping=damping)
        return lds(scores.numpy(), masks, margins[:, targets.numpy()]).value

    print("| proj_dim | damping / mean diag(ΦᵀΦ) | 5 models | 10 models | 20 models |")
    print("|---:|---:|---:|---:|---:|")
    for k, c in [(32, 0), (64, 0), (128, 0), (256, 0), (512, 0), (128, 0.1), (512, 1.0),
                 (2048, 1.0)]:
        row = " | ".join(f"{value(last[:m], k, c):.3f}" for m in (5, 10, 20))
        print(f"| {k} | {c} | {row} |", flush=True)
    ten = [m for e in sorted(by_epoch) for m in by_epoch[e][:10]]
    print(f"10 models x 5 checkpoints, proj_dim 128: {value(ten, 128):.3f}")
    print(f"20 models x 5 checkpoints, proj_dim 128: {value(every, 128):.3f}")
    print(f"20 models x 5 checkpoints, proj_dim 512, damping 1: {value(every, 512, 1.0):.3f}")


def timed(fn):
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--proj-dim", type=int, default=128)
    parser.add_argument("--skip-traker", action="store_true")
    parser.add_argument("--lds", default="", help="a run directory: print the LDS curve")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.lds:
        lds_curve(args.lds)
        return
    config, data, targets, models, layers = trained_models(args.models)
    inputs = (data.train_x, data.train_y, data.eval_x[targets], data.eval_y[targets])
    k, seed = args.proj_dim, config.seed
    print(f"{len(models)} MLPs, P = {models[0].num_params}, n = {len(inputs[0])}, "
          f"T = {len(targets)}, proj_dim {k}, one thread, CPU seconds")
    old, t_old = timed(lambda: before_scores(models, *inputs, k, seed))
    new, t_new = timed(lambda: trak_scores(models, *inputs, proj_dim=k, seed=seed))
    r = float(np.corrcoef(old.numpy().ravel(), new.numpy().ravel())[0, 1])
    print(f"before {t_old:6.2f} s   now {t_new:6.2f} s   ({t_old / t_new:.1f}x)   "
          f"scores before vs now: Pearson r = {r:.7f}")
    if args.skip_traker:
        return
    try:
        import trak  # noqa: F401
    except ImportError:
        print("traker is not installed (pip install traker): its time is not measured")
        return
    theirs, t_theirs = timed(lambda: traker_scores(layers, *inputs, k, seed))
    # one model, the same R: traker's scores are ours up to one constant factor
    same = traker_scores(layers[:1], *inputs, k, seed, projector=our_projector(layers[0], k, seed))
    one = trak_scores(models[:1], *inputs, proj_dim=k, seed=seed)
    r2 = float(np.corrcoef(same.numpy().ravel(), one.numpy().ravel())[0, 1])
    print(f"traker {t_theirs:6.2f} s   now / traker = {t_new / t_theirs:.2f}   "
          f"one model, our R in traker vs ours: Pearson r = {r2:.7f}")


if __name__ == "__main__":
    main()
