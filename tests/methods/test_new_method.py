"""A worked example of adding an estimator: a tiny retraining method, "mean margin
difference" (the mean margin of the models holding a training point minus that of the
models without it), declared in one class and added to a copy of the map, runs through the
one ``estimate`` stage on a small run: tables, self scores, marker, and nothing recomputed
when current.

In the package the same method is one new module under ``datamodels/methods/`` and one line
in ``METHODS``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodels.estimators import Scores
from datamodels.methods import METHODS, PlanTable, RetrainingMethod
from datamodels.stages.base import run_stage
from datamodels.stages.estimate import EstimateStage
from datamodels.store import Run
from datamodels.store.positions import eval_positions


class MeanMarginDifference(RetrainingMethod):
    """score[t, i] = mean margin_t over the models of ``estimate.plan`` holding i − the mean
    over those without i (no standard error)."""

    name = "mean_margin_difference"  # source "plan", plan_kinds (): estimate.plan

    def scores(self, table: PlanTable, targets: np.ndarray) -> Scores:
        margins = table.margins[:, targets].astype(np.float64)  # [m, T]
        inside = table.masks.astype(np.float64)  # [m, n_train]
        with_i = inside.T @ margins / np.maximum(inside.sum(0), 1)[:, None]
        without = (1 - inside).T @ margins / np.maximum((1 - inside).sum(0), 1)[:, None]
        return Scores((with_i - without).T.astype(np.float32), None, len(inside))


MINE = {**METHODS, MeanMarginDifference.name: MeanMarginDifference}


def test_a_new_retraining_method_runs_through_the_one_stage(tiny_run):
    config, uri = tiny_run
    run = Run(uri)
    stage = EstimateStage(config, run, "mean_margin_difference", methods=MINE)
    assert stage.what == "tables" and [u.name for u in stage.units()] == ["scores", "self"]
    written = run_stage(stage, show_progress=False)
    assert written == {"scores": 10, "self_scores": run.n_train}

    masks, margins = run.masks_and_margins(plan="train")
    targets, scores = run.scores("mean_margin_difference")
    expected = np.array(
        [[margins[masks[:, i], t].mean() - margins[~masks[:, i], t].mean()
          for i in range(run.n_train)] for t in targets]
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    # self scores: each training point's score on its own margin (the diagonal)
    own = eval_positions(run, "train")
    diagonal = [margins[masks[:, i], own[i]].mean() - margins[~masks[:, i], own[i]].mean()
                for i in range(run.n_train)]
    np.testing.assert_allclose(run.self_scores()["mean_margin_difference"], diagonal,
                               rtol=1e-5, atol=1e-5)
    assert (Path(uri) / "_stages" / "estimate-mean_margin_difference.json").is_file()
    # current: the same settings run nothing
    again = EstimateStage(config, run, "mean_margin_difference", methods=MINE)
    assert run_stage(again, show_progress=False) == {}
