"""Metagradient self scores for mislabel detection on digits with 10% flipped labels
(configs/digits.yaml's model and recipe): the self score of training point i is ∂m_i/∂w_i,
its own margin's derivative in its own loss weight, on replayed runs.

    python benchmarks/metagradient_mislabel.py [--models 4]

A full-data model (every point in its batches) scores every point. A model of an α = ½
plan holds half of them: the others are in none of its batches, so their metagradient is 0
by construction; the estimate stage averages each point over the models that hold it
(``Metagradient.held_points``). Printed: flipped labels found after inspecting 20% of
the training set (and the AUC of the curve) for the full-data model, for one α = ½ model
with its unheld points at 0 (what the stage reported before), and for the first ``--models``
α = ½ models averaged over all models and over the models that hold each point.
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
from datamodels.metrics.mislabel import mislabel_detection  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.plans import masks_for, plan_models  # noqa: E402
from datamodels.store import Run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--block", type=int, default=160, help="targets per adjoint pass")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(ROOT / "configs/digits.yaml").model_dump(mode="json")
    config = config_from_dict(base, ["dataset.flip_fraction=0.1"])
    out = tempfile.mkdtemp(prefix="metagradient_mislabel_")
    api.prepare(config, out)
    run = Run(out)
    data = Context().data(run, config)
    examples = run.examples()
    train = examples[examples["train_position"].notna()].sort_values("train_position")
    flipped = (train["label"] != train["original_label"]).to_numpy()
    n = data.n_train
    planned = plan_models(config, n)
    masks = masks_for(config, planned, n)
    print(f"digits MLP, {n} training points, {int(flipped.sum())} labels flipped")

    def self_scores(mask: np.ndarray, seed: int) -> np.ndarray:
        replayed = replay_mlp(data.train_x, data.train_y, mask, seed, config.model,
                              config.train, data.num_classes)
        own = np.zeros(n)
        for start in range(0, n, args.block):
            rows = np.arange(start, min(n, start + args.block))
            table = metagradient_scores(replayed, data.train_x, data.train_y,
                                        data.train_x[rows], data.train_y[rows])
            own[rows] = table.numpy()[np.arange(len(rows)), rows]
        return own

    def line(name: str, scores: np.ndarray) -> None:
        result = mislabel_detection(scores, flipped)
        print(f"  {name:<58} found@20% {result.found_at(0.2):.2f}  AUC {result.auc:.3f}")

    line("full-data model (seed of the plan's model 0)",
         self_scores(np.ones(n, bool), int(planned.seed[0])))
    total, held = np.zeros(n), np.zeros(n)
    for k in range(args.models):
        own = self_scores(masks[k], int(planned.seed[k]))
        if k == 0:
            line("one alpha = 1/2 model, unheld points 0", own)
        total += own
        held += masks[k]
    line(f"{args.models} alpha = 1/2 models, mean over all", total / args.models)
    line(f"{args.models} alpha = 1/2 models, mean over those holding the point "
         f"({(held > 0).mean():.0%} held)", np.where(held > 0, total / np.maximum(held, 1), 0))


if __name__ == "__main__":
    main()
