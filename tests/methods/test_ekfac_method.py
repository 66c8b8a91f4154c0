"""``ekfac`` through the one ``estimate`` stage: units per (model, block) sharing one fit per
model, averaged over models, equal to the EK-FAC scores computed here model by model on each
model's own training subset; and only run when named."""

from __future__ import annotations

import numpy as np
import torch

from datamodels.config import config_from_dict
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.ekfac import ekfac_scores, ekfac_self_scores, fit_ekfac
from datamodels.methods import METHODS
from datamodels.orchestrate.context import Context
from datamodels.stages.base import run_stage
from datamodels.stages.estimate import EstimateStage
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint
from tests.methods.conftest import TINY


def test_ekfac_runs_through_the_estimate_stage_and_matches_its_maths(tiny_run):
    _, uri = tiny_run
    run = Run(uri)
    config = config_from_dict(
        TINY, ["gradients.models=2", "gradients.targets_per_task=4", "gradients.ekfac_damping=0.02"]
    )
    assert METHODS["ekfac"].on_request
    stage = EstimateStage(config, run, "ekfac")
    assert stage.model_ids == [0, 1]
    assert run_stage(stage, show_progress=False) == {
        "scores": 10, "self_scores": run.n_train, "models": 2
    }

    data = Context().data(run, config)
    targets, scores = run.scores("ekfac")
    tx, ty = data.eval_x[torch.from_numpy(targets)], data.eval_y[torch.from_numpy(targets)]
    x, y = data.train_x, data.train_y
    want, want_self = [], []
    for model_id, history in stage.checkpoints.items():
        model = functional_model(config, data, load_checkpoint(run.fs, history[-1][2])["layers"])
        mask = torch.from_numpy(run.masks_of(np.array([model_id]))[0])
        ek = fit_ekfac(model, x[mask], y[mask], damping=0.02)
        want.append(ekfac_scores(model, ek, tx, ty, x, y).numpy())
        want_self.append(ekfac_self_scores(model, ek, x, y).numpy())
    want = np.mean(want, axis=0)
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(
        run.self_scores()["ekfac"], np.mean(want_self, axis=0), rtol=1e-4, atol=1e-7
    )
    assert np.abs(want).max() > 0
