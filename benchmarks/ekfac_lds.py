"""EK-FAC influence beside TRAK, TracIn and influence with conjugate gradients: LDS and CPU
seconds on three small problems, in one process (no Ray, no run directory).

    PYTHONPATH=$PWD python benchmarks/ekfac_lds.py [--only digits,cnn,fastnet]

* ``digits``: configs/digits.yaml's MLP (one hidden layer of 64) on scikit-learn's digits;
* ``cnn``: a user's network through ``model.factory`` (``tests.custom_models:make_cnn``: two
  3×3 convolutions and a linear head) on 8×8 digit images;
* ``fastnet``: the fast conv net (width 8) on 16-px synthetic CIFAR-shaped images
  (``datamodels.data.synthetic``, one prototype per class, milder blending and noise).

Each trains ``models`` α = ½ models (checkpoints at every epoch) and ``eval`` held-out α = ½
models through the real trainer (``train_batch``); every method scores the same test
targets from the same ``models`` checkpointed models (TracIn over every epoch's
checkpoint, the others at the last), and LDS is on the held-out models. Influence's
conjugate gradients stop at 100 iterations (10 on the conv nets) or a relative residual of
1e-6; damping is ``gradients.damping`` (0.01) for it and for EK-FAC. Seconds are CPU
seconds (``time.process_time``, one thread) of computing the [T, n] scores from the
trained parameters, summed over the models.
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
from datamodels.config import Config, config_from_dict, load_config  # noqa: E402
from datamodels.data.synthetic import synthetic_cifar  # noqa: E402
from datamodels.gradients.checkpointed import functional_model  # noqa: E402
from datamodels.gradients.ekfac import ekfac_scores, fit_ekfac  # noqa: E402
from datamodels.gradients.ihvp import ConjugateGradient  # noqa: E402
from datamodels.gradients.influence import influence_scores  # noqa: E402
from datamodels.gradients.tracin import tracin_scores  # noqa: E402
from datamodels.gradients.trak import trak_scores  # noqa: E402
from datamodels.metrics.lds import lds  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.trainers.api import train_batch  # noqa: E402
from datamodels.trainers.data import TrainData, _stats  # noqa: E402
from datamodels.trainers.outcome import CheckpointRequest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = {  # models, held-out models, test targets, TRAK projection
    "digits": dict(models=5, eval=100, targets=100, proj_dim=128),
    "cnn": dict(models=3, eval=40, targets=20, proj_dim=128),
    "fastnet": dict(models=2, eval=24, targets=20, proj_dim=256),
}


def prepared(raw: dict) -> tuple[Config, TrainData]:
    config = config_from_dict(raw)
    out = str(Path(tempfile.mkdtemp()) / "run")
    api.prepare(config, out)
    return config, Context().data(Run(out), config)


def digits_problem():
    config = load_config(ROOT / "configs/digits.yaml")
    return prepared(config.model_dump(mode="json"))


def cnn_problem():
    return prepared({
        "name": "cnn_digits",
        "dataset": {"factory": "tests.custom_models:digit_images", "kwargs": {"limit": 600}},
        "model": {"factory": "tests.custom_models:make_cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.1, "weight_decay": 5e-4},
        "plans": [{"name": "train", "alpha": 0.5, "count": 8}],
    })


def fastnet_problem():
    n, n_test, size = 400, 60, 16
    easier = dict(size=size, modes=1, confusion=0.5, noise=0.2)  # learnable from 200 images
    xtr, ytr = synthetic_cifar(n, seed=1, **easier)
    xte, yte = synthetic_cifar(n_test, seed=2, **easier)
    mean, std = _stats(xtr)

    def norm(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - mean) / std

    data = TrainData(norm(xtr), torch.from_numpy(ytr), norm(xte), torch.from_numpy(yte), n_test,
                     10, np.arange(n), "", mean, std)
    config = Config.model_validate({
        "model": {"arch": "fastnet", "width": 8},
        "train": {"epochs": 6, "batch_size": 32, "lr": 40.0, "momentum": 0.85,
                  "weight_decay": 0.0153, "schedule": "airbench", "label_smoothing": 0.2,
                  "tta": 0},
    })
    return config, data


PROBLEMS = {"digits": digits_problem, "cnn": cnn_problem, "fastnet": fastnet_problem}


def timed(fn):
    start = time.process_time()
    value = fn()
    return value, time.process_time() - start


def run_problem(name: str) -> list[tuple[str, float, float]]:
    config, data = PROBLEMS[name]()
    size = SIZES[name]
    rng = np.random.default_rng(0)
    n, M = data.n_train, size["models"]
    masks = rng.random((M, n)) < 0.5
    eval_masks = rng.random((size["eval"], n)) < 0.5
    epochs = tuple(range(1, config.train.epochs + 1))
    start = time.perf_counter()
    outcome = train_batch(masks, np.arange(M), data, config,
                          checkpoints=CheckpointRequest(tuple(range(M)), epochs))
    held_out = train_batch(eval_masks, 10**6 + np.arange(size["eval"]), data, config)
    T = min(size["targets"], data.n_test)
    true = held_out.margins[:, :T]
    print(f"{name}: trained {M} + {size['eval']} models in {time.perf_counter() - start:.0f} s "
          f"(n_train {n}, {T} test targets, held-out accuracy "
          f"{held_out.eval_accuracy.mean():.3f})", flush=True)
    by_model = {m: sorted((s for s in outcome.snapshots if s.row == m), key=lambda s: s.epoch)
                for m in range(M)}
    models = [[functional_model(config, data, s.params) for s in by_model[m]] for m in range(M)]
    x, y = data.train_x, data.train_y
    tx, ty = data.eval_x[:T], data.eval_y[:T]
    g = config.gradients
    chunk = g.chunk_size if models[0][-1].layer_io is not None else 64

    def ekfac():
        total = 0.0
        for m in range(M):
            model, keep = models[m][-1], torch.from_numpy(masks[m])
            ek = fit_ekfac(model, x[keep], y[keep], damping=g.damping, chunk_size=chunk)
            total = total + ekfac_scores(model, ek, tx, ty, x, y)
        return total / M

    def influence_cg():
        dense = models[0][-1].layer_io is not None
        # conv nets take their HVPs one vector at a time: fewer iterations keep it minutes
        solver = ConjugateGradient(damping=g.damping, tol=1e-6, max_iter=100 if dense else 10,
                                   hvp_chunk=None if dense else chunk)
        total = 0.0
        for m in range(M):
            keep = torch.from_numpy(masks[m])
            total = total + influence_scores(models[m][-1], x[keep], y[keep], tx, ty,
                                             solver=solver, points_x=x, points_y=y,
                                             chunk_size=chunk)
        return total / M

    def tracin():
        total = 0.0
        for m in range(M):
            history = [(c.params, s.lr) for c, s in zip(models[m], by_model[m], strict=True)]
            total = total + tracin_scores(models[m][-1], history, x, y, tx, ty,
                                          utility="margin", chunk_size=chunk)
        return total / M

    def trak():  # every checkpoint, λ = mean diag(ΦᵀΦ): the estimate stage's defaults
        every = [c for m in range(M) for c in models[m]]
        return trak_scores(every, x, y, tx, ty, proj_dim=size["proj_dim"], damping=1.0,
                           relative_damping=True, chunk_size=chunk)

    rows = []
    for method, fn in [("ekfac", ekfac), ("trak", trak), ("tracin", tracin),
                       ("influence (cg)", influence_cg)]:
        scores, seconds = timed(fn)
        value = lds(scores.double().numpy(), eval_masks, true).value
        rows.append((method, value, seconds))
        print(f"  {method}: LDS {value:.3f}, {seconds:.1f} CPU s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="digits,cnn,fastnet")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = {name: run_problem(name) for name in args.only.split(",")}
    print(f"\n| method | {' | '.join(table)} |")
    print("|---|" + "---|" * len(table))
    for i, (method, _, _) in enumerate(next(iter(table.values()))):
        cells = [f"{rows[i][1]:.3f} ({rows[i][2]:.1f} s)" for rows in table.values()]
        print(f"| {method} | {' | '.join(cells)} |")
    counts = ", ".join(f"{k} {SIZES[k]['models']}" for k in table)
    print(f"(LDS, CPU seconds on one thread; models per method: {counts})")


if __name__ == "__main__":
    main()
