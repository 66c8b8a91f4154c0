"""``datamodels attack``: a training-set attack on one target (Koh & Liang 2017, §5.2).

Takes the run's first checkpointed model (its final checkpoint and its training subset),
picks the training point whose input-perturbation influence on the target's margin is
largest (or the one given), and perturbs that input within an L∞ ``budget`` (in the
model's normalised input units) by signed steps of ``influence_pert``, retraining the model
on the perturbed data after each step with the run's own recipe and seed (``train_batch``)
until the target is misclassified. One unit; the outcome goes to
``attacks/target_<eval_position>.parquet``, and the stage returns that row as a dict.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from datamodels.errors import EstimateError
from datamodels.gradients import FunctionalModel, craft_attack, influence_pert_scores
from datamodels.gradients.checkpointed import functional_model, solver_for
from datamodels.gradients.influence_pert import most_influential_point
from datamodels.methods.checkpoints import find_checkpoints
from datamodels.methods.traits import trains_model
from datamodels.plans import checkpoint_epochs
from datamodels.stages.base import Stage, Unit
from datamodels.stages.versions import attack_versions
from datamodels.store import ATTACKS_DIR, Run, attack_schema
from datamodels.store.checkpoints import load_checkpoint
from datamodels.trainers.api import train_batch, trainer_versions
from datamodels.trainers.outcome import CheckpointRequest


class AttackStage(Stage):
    what = "attacks"

    def __init__(
        self,
        config,
        run: Run,
        target: int,
        budget: float,
        point: int | None = None,
        max_iter: int = 20,
    ) -> None:
        super().__init__(config, run)
        if not 0 <= target < run.n_eval:
            raise EstimateError(f"--target {target} is not an eval position (0..{run.n_eval - 1})")
        if budget <= 0:
            raise EstimateError(
                f"--budget must be > 0 (an L∞ radius in normalised input units); got {budget}"
            )
        self.target, self.budget, self.point, self.max_iter = target, float(budget), point, max_iter
        self.name = f"attack-{target}"
        if not trains_model(config):
            raise EstimateError(
                "influence: model.arch null trains no model, so there is nothing to "
                "differentiate; use a real architecture"
            )
        found = find_checkpoints(config, run, lambda: self.planned, "influence", 1)
        self.model_id = min(found)
        self.checkpoint = found[self.model_id][-1][2]

    @property
    def output(self) -> str:
        return f"{ATTACKS_DIR}/target_{self.target}.parquet"

    def versions(self) -> dict[str, int]:
        # the retraining goes through train_batch with its default (resident) loader
        return attack_versions(trainer_versions(self.config, "resident"))

    def fingerprint(self) -> dict:
        return {
            "target": self.target,
            "budget": self.budget,
            "point": self.point,
            "max_iter": self.max_iter,
            "checkpoint": self.checkpoint,
            "gradients": self.config.gradients.model_dump(mode="json"),
            "config": self.config.hash,
        }

    def outputs(self) -> list[str]:
        return [self.output]

    def units(self) -> list[Unit]:
        return [Unit("attack")]

    def done(self, unit: Unit) -> bool:
        return False

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        config, run = self.config, self.run
        data = ctx.data(run, config, "cpu")
        mask = run.masks_of(np.array([self.model_id]))[0]
        seeds = self.planned.select_ids(np.array([self.model_id])).seed
        members = np.flatnonzero(mask)
        model = functional_model(config, data, load_checkpoint(run.fs, self.checkpoint)["layers"])
        x_s, y_s = data.train_x[members].double(), data.train_y[members]
        tx, ty = data.eval_x[self.target].double(), data.eval_y[self.target]
        solver = solver_for(config)
        if self.point is None:
            pert = influence_pert_scores(
                model, x_s, y_s, tx.unsqueeze(0), ty.reshape(1), utility="margin", solver=solver
            )
            local = most_influential_point(pert[0])
        else:
            where = np.flatnonzero(members == self.point)
            if where.size == 0:
                raise EstimateError(
                    f"--point {self.point} is not in the training subset of model {self.model_id}; "
                    "choose a train position the model was trained on"
                )
            local = int(where[0])

        def refit(x_new: torch.Tensor) -> FunctionalModel:
            moved = data.train_x.clone()
            moved[torch.from_numpy(members)] = x_new.to(moved.dtype)
            variant = type(data)(**{**data.__dict__, "train_x": moved})
            request = CheckpointRequest((0,), checkpoint_epochs(config)[-1:])
            outcome = train_batch(mask[None], seeds, variant, config, checkpoints=request)
            return functional_model(config, data, outcome.snapshots[-1].params)

        result = craft_attack(
            model,
            x_s,
            y_s,
            tx,
            ty,
            point=local,
            budget=self.budget,
            refit=refit,
            max_iter=self.max_iter,
            solver=solver,
        )
        delta = result.delta.reshape(-1).float().numpy()
        table = pa.table(
            {
                "target": [self.target],
                "train_position": [int(members[local])],
                "model_id": [self.model_id],
                "budget": [self.budget],
                "flipped": [bool(result.flipped)],
                "margins": [list(map(float, result.margins))],
                "delta": pa.FixedSizeListArray.from_arrays(pa.array(delta), len(delta)),
            }
        )
        self.write_table(self.output, table, attack_schema(len(delta)))

    def finish(self) -> dict:
        return self.run.read_table(self.output).to_pylist()[0]

    def up_to_date(self) -> dict:
        return self.finish()
