"""A worked example of adding a gradient estimator: "gradient dot" (−∇m_t·∇ℓ_z at each
model's last checkpoint, TracIn with one checkpoint at unit learning rate), declared in one
class and added to a copy of the map, runs through the one ``estimate`` stage as units per
(model, block), each writing its part, averaged over the models in ``finish``."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.config import config_from_dict
from datamodels.gradients import tracin_scores
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.grads import per_example_grads
from datamodels.methods import METHODS, Block, GradientMethod
from datamodels.orchestrate.context import Context
from datamodels.stages.base import run_stage
from datamodels.stages.estimate import EstimateStage
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint
from tests.methods.conftest import TINY


class GradientDot(GradientMethod):
    """score[t, z] = −∇m_t·∇ℓ_z at the last checkpoint; self score ‖∇ℓ_z‖²."""

    name = "gradient_dot"  # source "checkpoints": the last checkpoint of gradients.models models

    def values(self, b: Block) -> torch.Tensor:
        x, y = b.data.train_x, b.data.train_y
        if b.kind == "scores":
            tx, ty = b.target_tensors()
            target = per_example_grads(b.model, tx, ty, "margin")  # [T, P]
            return -target @ per_example_grads(b.model, x, y, "loss").T
        rows = per_example_grads(b.model, x[b.rows], y[b.rows], "loss")
        return (rows * rows).sum(1)


MINE = {**METHODS, GradientDot.name: GradientDot}


def test_a_new_gradient_method_runs_through_the_one_stage(tiny_run):
    _, uri = tiny_run
    run = Run(uri)
    config = config_from_dict(TINY, ["gradients.models=2", "gradients.targets_per_task=4"])
    stage = EstimateStage(config, run, "gradient_dot", methods=MINE)
    assert stage.what == "tasks" and stage.model_ids == [0, 1]
    assert len(stage.units()) == 2 * (3 + 1)  # per model: 3 target blocks of 4, 1 self block
    assert run_stage(stage, show_progress=False) == {
        "scores": 10, "self_scores": run.n_train, "models": 2
    }

    data = Context().data(run, config)
    targets, scores = run.scores("gradient_dot")
    tx, ty = data.eval_x[torch.from_numpy(targets)], data.eval_y[torch.from_numpy(targets)]
    expected = []
    for history in stage.checkpoints.values():
        layers = load_checkpoint(run.fs, history[-1][2])["layers"]
        model = functional_model(config, data, layers)
        expected.append(tracin_scores(
            model, [(model.params, 1.0)], data.train_x, data.train_y, tx, ty, utility="margin"
        ).numpy())
    want = np.mean(expected, axis=0)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert run.self_scores()["gradient_dot"].min() >= 0
