"""The ``removal`` stage: counterfactual removal and brittleness, verified by retraining.

Three steps, each resumable (`datamodels.api.removal` runs them under the run's lock):

1. **Sets** (`RemovalSetsStage`, stage ``removal_sets``, once): from the score tables named
   by the removal plan's ``methods`` (after fit / estimate), the targets
   (`applications.removal.choose_targets`) and for each (method, target, k) the k most
   helpful training points. Written as
   ``removals/sets.parquet`` and then ``plan_masks/<plan>.parquet`` (the stored masks; its
   presence is the commit point: once written it is never rewritten, so every model trained
   from it keeps matching its mask, and resume / verify work as for any plan).
2. **Training**: the plan's models go through the same ``train`` stage, executor and store as
   every other plan (``models/`` rows with ``plan`` = the removal plan's name); ``train``
   skips the plan until step 1 has written its masks.
3. **Results** (`RemovalStage`): the trained margins reduced to ``removals/results.parquet``,
   one row per set: predicted vs actual change, stderr over seeds, flipped or not.

Reference margin (what "correctly predicted" and the predicted flip start from): the
datamodel's prediction for the full training set, b_t + Σ_i w_t,i, when the run has
datamodels; otherwise the target's mean margin over the ``fit.plan`` models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from datamodels.applications.removal import choose_targets, removal_results, removal_sets
from datamodels.applications.tables import split_scores
from datamodels.config import Config, PlanConfig
from datamodels.errors import ConfigError, EstimateError
from datamodels.stages.base import Stage, Unit
from datamodels.stages.versions import removal_versions
from datamodels.store import (
    REMOVAL_RESULTS_PATH,
    REMOVAL_RESULTS_SCHEMA,
    REMOVAL_SETS_PATH,
    REMOVAL_SETS_SCHEMA,
    Run,
)


def removal_plan(config: Config) -> PlanConfig | None:
    """The config's ``removal`` plan (at most one), or None."""
    plans = config.plans_of_kind("removal")
    return plans[0] if plans else None


def require_removal_plan(config: Config) -> PlanConfig:
    plan = removal_plan(config)
    if plan is None:
        raise ConfigError(
            "the config has no removal plan; add one, e.g. {name: removal, kind: removal, "
            "count: 20, ks: [10, 50], seeds: 3} under plans (a new config hash: a new run)"
        )
    return plan


def reference_margins(config: Config, run: Run, test_targets: np.ndarray) -> np.ndarray:
    """float64[T]: the margin each test target's flip is predicted from (module docstring)."""
    if "datamodels" in run.score_methods() and run.fs.isfile("datamodels/targets.parquet"):
        split = split_scores(run, "datamodels")
        bias = run.targets().set_index("target")["bias"].reindex(split.test_targets)
        full = bias.to_numpy(np.float64) + split.test_scores.astype(np.float64).sum(1)
        lookup = dict(zip(split.test_targets.tolist(), full, strict=True))
        return np.array([lookup.get(int(t), np.nan) for t in test_targets], dtype=np.float64)
    margins = run.margins(plan=config.fit.plan)
    if not len(margins):
        raise EstimateError(
            f"removal: no datamodels and no models in plan {config.fit.plan!r} to say which "
            "targets are predicted correctly; run `datamodels fit` first"
        )
    return margins[:, np.asarray(test_targets, dtype=np.int64)].mean(0).astype(np.float64)


def write_removal_sets(config: Config, run: Run) -> bool:
    """Step 1 (module docstring) without the stage's marker; False when the plan's masks are
    already written. `RemovalSetsStage` is the way a run does it."""
    plan = require_removal_plan(config)
    if run.has_plan_masks(plan.name):
        return False
    missing = [m for m in plan.methods if m not in run.score_methods()]
    if missing:
        raise EstimateError(
            f"plans.{plan.name}.methods: no scores/{missing[0]}.parquet yet; run "
            f"`datamodels fit` / `datamodels estimate -m {missing[0]}` first (have: "
            f"{', '.join(run.score_methods()) or 'none'})"
        )
    test_targets = split_scores(run, plan.methods[0]).test_targets
    reference = reference_margins(config, run, test_targets)
    targets = choose_targets(plan, config.seed, test_targets, reference)
    scores = {}
    for method in plan.methods:
        split = split_scores(run, method)
        rows = np.searchsorted(split.test_targets, targets)
        if (rows >= len(split.test_targets)).any() or (split.test_targets[rows] != targets).any():
            raise EstimateError(
                f"scores/{method}.parquet lacks some of the removal targets; re-run its estimate"
            )
        scores[method] = split.test_scores[rows]
    reference_of = dict(zip(test_targets.tolist(), reference, strict=True))
    chosen_reference = np.array([reference_of[int(t)] for t in targets], dtype=np.float64)
    sets, removed = removal_sets(plan, targets, scores, chosen_reference, run.n_train)
    run.write_table(REMOVAL_SETS_PATH, sets, REMOVAL_SETS_SCHEMA, removal_versions())
    run.write_plan_masks(plan.name, removed)  # last: the commit point
    return True


class RemovalSetsStage(Stage):
    """Step 1: ``removals/sets.parquet`` and ``plan_masks/<plan>.parquet`` from the score
    tables. Its fingerprint is the score tables it reads until the masks exist; from then on
    the masks themselves (written once: later scores change nothing, as the models trained
    from the masks must keep matching them)."""

    name = "removal_sets"
    what = "tables"
    refingerprint_after_finish = True  # the marker records the masks it wrote

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        self.plan = require_removal_plan(config)

    def versions(self) -> dict[str, int]:
        return removal_versions()

    def fingerprint(self) -> dict:
        masks = self.run.plan_masks_path(self.plan.name)
        if self.run.fs.isfile(masks):
            folder, _, name = masks.rpartition("/")
            return {"plan": self.plan.name, "masks": self.run.fs.stats(folder, name)}
        scores = {m: self.run.fs.stats("scores", f"{m}.parquet") for m in self.plan.methods}
        return {"config": self.config.hash, "plan": self.plan.name, "scores": scores}

    def outputs(self) -> list[str]:
        return [REMOVAL_SETS_PATH, self.run.plan_masks_path(self.plan.name)]

    def units(self) -> list[Unit]:
        return [Unit("sets")]

    def done(self, unit: Unit) -> bool:
        return self.run.has_plan_masks(self.plan.name)

    def compute(self, ctx, unit: Unit, shared=None) -> bool:
        return write_removal_sets(self.config, self.run)

    def finish(self) -> bool:
        return True

    def up_to_date(self) -> bool:
        return False


class RemovalStage(Stage):
    """Step 3: ``removals/results.parquet`` from the removal plan's trained models."""

    name = "removal"
    what = "tables"

    def __init__(self, config: Config, run: Run) -> None:
        super().__init__(config, run)
        self.plan = require_removal_plan(config)

    def versions(self) -> dict[str, int]:
        return removal_versions()

    def fingerprint(self) -> dict:
        return {
            "config": self.config.hash,
            "plan": self.plan.name,
            "models": self.run.plan_witness(self.plan.name),
            "sets": self.run.fs.stats("removals", "sets.parquet"),
        }

    def outputs(self) -> list[str]:
        return [REMOVAL_RESULTS_PATH]

    def units(self) -> list[Unit]:
        if not self.run.fs.isfile(REMOVAL_SETS_PATH):
            raise EstimateError(
                f"{self.run.fs.display(REMOVAL_SETS_PATH)} does not exist; run "
                "`datamodels removal RUN` (it writes the sets, trains them, then reduces)"
            )
        return [Unit("results")]

    def done(self, unit: Unit) -> bool:
        return False  # one cheap unit; the marker says when it is current

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        ids = self.run.model_ids(plan=self.plan.name)
        margins = self.run.margins(plan=self.plan.name)
        mask_index = self.planned.select_ids(ids).mask_index
        results = removal_results(self.run.removal_sets(), mask_index, margins)
        self.write_table(REMOVAL_RESULTS_PATH, results, REMOVAL_RESULTS_SCHEMA)

    def finish(self) -> pd.DataFrame:
        return self.run.removal_results()

    def up_to_date(self) -> pd.DataFrame:
        return self.run.removal_results()
