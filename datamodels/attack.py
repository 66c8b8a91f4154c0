"""``datamodels attack``: a training-set attack on one target (Koh & Liang 2017, §5.2).

Takes the run's first checkpointed model (its final checkpoint and its training subset),
picks the training point whose input-perturbation influence on the target's margin is
largest (or the one given), and perturbs that input within an L∞ ``budget`` (in the
model's normalised input units) by signed steps of ``influence_pert``, retraining the model
on the perturbed data after each step with the run's own recipe and seed (``train_batch``)
until the target is misclassified. The outcome goes to ``attacks/target_<eval_position>.parquet``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from datamodels.config import Config
from datamodels.estimate import EstimateError
from datamodels.estimate_gradients import functional_model, plan_job, solver_for
from datamodels.gradients import AttackResult, FunctionalModel, craft_attack, influence_pert_scores
from datamodels.gradients.influence_pert import most_influential_point
from datamodels.orchestrate.worker import load_context
from datamodels.plans import checkpoint_epochs, masks_for, plan_models
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint
from datamodels.train.api import train_batch
from datamodels.train.outcome import CheckpointRequest

ATTACKS_DIR = "attacks"


def attack_schema(input_dim: int) -> pa.Schema:
    return pa.schema(
        [("target", pa.int64()), ("train_position", pa.int64()), ("model_id", pa.int64()), ("budget", pa.float64()),
         ("flipped", pa.bool_()), ("margins", pa.list_(pa.float64())), ("delta", pa.list_(pa.float32(), input_dim))],
        metadata={b"schema_version": b"1"},
    )


def attack(config: Config, run: Run, target: int, budget: float, point: int | None = None,
           max_iter: int = 20) -> tuple[AttackResult, int, int]:
    """Attack eval position ``target``; returns (result, train position attacked, model id)."""
    n_eval = run.n_eval
    if not 0 <= target < n_eval:
        raise EstimateError(f"--target {target} is not an eval position (0..{n_eval - 1})")
    if budget <= 0:
        raise EstimateError(f"--budget must be > 0 (an L∞ radius in normalised input units); got {budget}")
    job = plan_job(config.model_copy(update={"gradients": config.gradients.model_copy(update={"models": 1})}), run,
                   "influence")
    model_id = job.model_ids[0]
    data, _ = load_context(run.uri, config, "cpu")
    planned = plan_models(config, data.n_train).select_ids(np.array([model_id]))
    mask = masks_for(config, planned, data.n_train)[0]
    members = np.flatnonzero(mask)
    model = functional_model(config, data, load_checkpoint(run.fs, job.checkpoints[model_id][-1][2])["layers"])
    x_s, y_s = data.train_x[members].double(), data.train_y[members]
    tx, ty = data.eval_x[target].double(), data.eval_y[target]
    solver = solver_for(config)
    if point is None:
        pert = influence_pert_scores(model, x_s, y_s, tx.unsqueeze(0), ty.reshape(1), utility="margin", solver=solver)
        local = most_influential_point(pert[0])
    else:
        where = np.flatnonzero(members == point)
        if where.size == 0:
            raise EstimateError(f"--point {point} is not in the training subset of model {model_id}; "
                                "choose a train position the model was trained on")
        local = int(where[0])

    def refit(x_new: torch.Tensor) -> FunctionalModel:
        moved = data.train_x.clone()
        moved[torch.from_numpy(members)] = x_new.to(moved.dtype)
        variant = type(data)(**{**data.__dict__, "train_x": moved})
        request = CheckpointRequest((0,), checkpoint_epochs(config)[-1:])
        outcome = train_batch(mask[None], planned.seed, variant, config, checkpoints=request)
        return functional_model(config, data, outcome.snapshots[-1].params)

    result = craft_attack(model, x_s, y_s, tx, ty, point=local, budget=budget, refit=refit, max_iter=max_iter,
                          solver=solver)
    position = int(members[local])
    table = pa.table({
        "target": [target], "train_position": [position], "model_id": [model_id], "budget": [float(budget)],
        "flipped": [bool(result.flipped)], "margins": [list(map(float, result.margins))],
        "delta": pa.FixedSizeListArray.from_arrays(pa.array(result.delta.reshape(-1).float().numpy()),
                                                   int(result.delta.numel())),
    })
    run.write_table(f"{ATTACKS_DIR}/target_{target}.parquet", table, attack_schema(int(result.delta.numel())))
    return result, position, model_id
