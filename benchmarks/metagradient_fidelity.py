"""What limits the metagradient's single-model LDS on the digits MLP (configs/digits.yaml's
model and recipe): is the replay the trained run, is the trained run reproducible, how large
is float32 rounding beside the effects measured, and how far from linear is the run's
response to the example weights.

    python benchmarks/metagradient_fidelity.py                    # the default recipe, lr 0.1
    python benchmarks/metagradient_fidelity.py --set train.lr=0.02

The metagradient g = ∂m/∂w is scored on the full-data model of a ``single_model`` plan (one
seed, the full set's batch order). Each measured model drops a random set D of the training
points (``--count`` per fraction) and is trained with the trainer itself at weights
w = 1 − ε·1_D (ε = 1: the plan's models, dropped points weighted 0; small ε: the same
direction, a small step). Its effect (m(w) − m(1))/ε is compared with the first-order
prediction −Σ_{i∈D} g_i: by the LDS (Spearman over the models, mean over targets) and by the
relative error ‖effect − prediction‖/‖effect‖. As ε → 0 both must go to exact agreement
(the metagradient is the derivative); what is left at ε = 1 is the non-linearity of the
training run in w, which no first-order estimate can follow. Last, the same replayed runs
with a smooth activation (``model.activation: softplus``, β = 4) in place of the ReLU: how
much of that non-linearity is the ReLU's kinks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodels import api  # noqa: E402
from datamodels.config import config_from_dict, load_config  # noqa: E402
from datamodels.gradients.metagradient import metagradient_scores, replay_mlp  # noqa: E402
from datamodels.metrics.lds import spearman_columns  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.plans import masks_for, plan_models  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.trainers.batched import train_mlp_batched  # noqa: E402
from datamodels.trainers.outcome import margins_from_logits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DROPS = (0.01, 0.1)
STEPS = (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 0.3, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--count", type=int, default=20, help="models per drop fraction")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="override, e.g. train.lr=0.02")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plans = [{"name": "single", "kind": "single_model", "count": args.count, "drops": list(DROPS)}]
    base = load_config(ROOT / "configs/digits.yaml").model_dump(mode="json")
    config = config_from_dict({**base, "plans": plans, "checkpoints": {"plan": "single"}}, args.set)
    out = tempfile.mkdtemp(prefix="metagradient_fidelity_")
    api.prepare(config, out)
    data = Context().data(Run(out), config)
    data64 = type(data)(**{**vars(data), "train_x": data.train_x.double(),
                           "eval_x": data.eval_x.double()})
    n, T = data.n_train, min(args.targets, data.n_test)
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    full, seed = masks[0], int(planned.seed[0])
    assert full.all(), "mask 0 of a single_model plan keeps every point"
    drops = masks[1:]
    recipe = config.train
    print(f"digits MLP, lr {recipe.lr}, momentum {recipe.momentum}, {recipe.epochs} epochs, "
          f"batch {recipe.batch_size}: n_train {n}, {T} targets, {len(drops)} drop models")

    def train(d, weights, chunk=None):
        rows = np.ones((len(weights), n), bool)
        margins, *_ = train_mlp_batched(
            d, rows, np.full(len(weights), seed), config.model, recipe,
            models_per_chunk=chunk, example_weights=weights,
        )
        return margins[:, :T].astype(np.float64)

    # 1. the replay (float64) against the trainer's run of the full-data model
    run = replay_mlp(data.train_x, data.train_y, full, seed, config.model, recipe,
                     data.num_classes)
    logits = run.model.logits_fn(run.final, data.eval_x[:T]).unsqueeze(0)
    replayed = margins_from_logits(logits, data.eval_y[:T])[0].numpy()
    ones = np.ones((1, n), np.float32)
    full32, full64 = train(data, ones)[0], train(data64, ones)[0]
    print("\n1. replay vs trainer, full-data model, max |Δ margin| over the targets:")
    print(f"   replay (float64) vs trainer float64: {np.abs(replayed - full64).max():.2e}")
    print(f"   replay (float64) vs trainer float32: {np.abs(replayed - full32).max():.2e}  "
          f"(margins' spread: std {full64.std():.2f})")

    # 2. reproducibility of the float32 trainer
    again = train(data, np.ones((3, n), np.float32), chunk=1)
    together = train(data, np.ones((3, n), np.float32))
    print("\n2. the same model retrained (float32): identical "
          f"{bool(np.array_equal(again[0], full32) and np.array_equal(again, together))} "
          f"(max |Δ| {np.abs(np.vstack([again, together]) - full32).max():.1e}; alone vs "
          "three in one batch)")

    # 3 and 4. the measured effects against the first-order prediction
    scores = metagradient_scores(run, data.train_x, data.train_y, data.eval_x[:T],
                                 data.eval_y[:T]).numpy()
    dropped = (~drops).astype(np.float64)
    predicted = -dropped @ scores.T  # [m, T]
    count = dropped.sum(1)
    print("\n3. float32 rounding vs the effects (ε = 1), per drop fraction: std of "
          "(effect32 − effect64) / std of effect64; LDS against each")
    effects64 = {}
    effect32 = train(data, drops.astype(np.float32)) - full32
    effects64[1.0] = train(data64, drops.astype(np.float64)) - full64

    def replayed_margins(weights):  # float64 margins (the trainer stores float32)
        r = replay_mlp(data.train_x, data.train_y, full, seed, config.model, recipe,
                       data.num_classes, weights)
        logits = r.model.logits_fn(r.final, data.eval_x[:T]).unsqueeze(0)
        return margins_from_logits(logits, data.eval_y[:T])[0].numpy()

    for eps in STEPS:
        effects64[eps] = np.stack(
            [(replayed_margins(1.0 - eps * d) - replayed) / eps for d in dropped]
        )
    for f in DROPS:
        rows = count == round(f * n)
        noise = effect32[rows] - effects64[1.0][rows]
        lds32 = np.nanmean(spearman_columns(effect32[rows], predicted[rows]))
        lds64 = np.nanmean(spearman_columns(effects64[1.0][rows], predicted[rows]))
        print(f"   drop {f:>5g}: noise/effect {noise.std() / effects64[1.0][rows].std():.2e}; "
              f"LDS vs float32 effects {lds32:.3f}, vs float64 effects {lds64:.3f}")
    print("\n4. linearity: runs at w = 1 − ε·1_D (float64 replay), effect/ε against −Σ_D g:")
    print(f"   {'ε':>6} " + " ".join(f"{f'LDS {f:g}':>10} {f'relerr {f:g}':>12}" for f in DROPS))
    for eps in STEPS:
        cells = []
        for f in DROPS:
            rows = count == round(f * n)
            e, p = effects64[eps][rows], predicted[rows]
            cells.append(f"{np.nanmean(spearman_columns(e, p)):>10.3f} "
                         f"{np.linalg.norm(e - p) / np.linalg.norm(e):>12.3f}")
        print(f"   {eps:>6g} " + " ".join(cells))
    print(f"   (first-order prediction's scale at ε = 1: mean |−Σ_D g| 1%: "
          f"{np.abs(predicted[count == round(DROPS[0] * n)]).mean():.3f}, 10%: "
          f"{np.abs(predicted[count == round(DROPS[1] * n)]).mean():.3f} margin units)")

    # 5. the same replayed run with a smooth activation (model.activation) in place of the ReLU
    print("\n5. the ReLU's kinks: the same runs replayed (float64) with ReLU and with "
          f"softplus(β = {BETA:g}); LDS and relative error of the exact first-order "
          "prediction (central differences along 1_D, h = 1e-7) against the effect at ε = 1, and "
          "its relative error against effect/ε")
    for name in ("relu", "softplus"):
        model = config.model.model_copy(update={"activation": name, "softplus_beta": BETA})
        smooth = config.model_copy(update={"model": model})

        def replayed(weights, smooth=smooth):
            return activation_margins(data, full, seed, smooth, weights, T)

        base = replayed(None)
        cells = []
        for f in DROPS:
            rows = np.flatnonzero(count == round(f * n))
            h = 1e-7  # inside one linear piece of the ReLU run (§4)
            pred = np.stack([
                -(replayed(1 + h * dropped[r]) - replayed(1 - h * dropped[r])) / (2 * h)
                for r in rows
            ])
            errors = []
            for eps in (1e-3, 1e-2, 1.0):
                effect = np.stack([replayed(1 - eps * dropped[r]) - base for r in rows]) / eps
                errors.append(np.linalg.norm(effect - pred) / np.linalg.norm(effect))
            cells.append(f"drop {f:g}: LDS {np.nanmean(spearman_columns(effect, pred)):.3f}"
                         ", relerr at ε = 1e-3 / 1e-2 / 1: "
                         + " / ".join(f"{e:.3f}" for e in errors))
        print(f"   {name:<9} " + "; ".join(cells))


BETA = 4.0


def activation_margins(data, mask, seed, config, weights, T) -> np.ndarray:
    """float64[T] margins of a replayed run (``config.model.activation``)."""
    run = replay_mlp(data.train_x, data.train_y, mask, seed, config.model, config.train,
                     data.num_classes, weights)
    logits = run.model.logits_fn(run.final, data.eval_x[:T].double())
    return margins_from_logits(logits.unsqueeze(0), data.eval_y[:T])[0].numpy()


if __name__ == "__main__":
    main()
