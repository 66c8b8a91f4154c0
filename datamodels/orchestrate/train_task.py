"""Inside a train task: one unit's models trained, their checkpoints and one shard written.

`TrainTask` is the in-task half of the ``train`` stage (`datamodels.stages.train.TrainStage`
mixes it in): a unit is a batch of model ids (``("models", ids, tries, kept)``) or one tmc
permutation walk (``("walk", plan, perm, representative id, attempt)``). The task trains the
models with ``train_batch`` (or walks the permutation until it truncates), writes the
checkpoints ``config.checkpoints`` asks for, and writes one shard of the models that trained
cleanly and that no shard holds yet (`stored_ids_among`, checked just before the write), with
`Run.write_models` (temp name, validate, rename). Its result is a small `Receipt`,
never the data itself. The stage object supplies ``config``, ``run``, ``planned`` (with
``_planned``, rebuilt per process), ``stored`` (stored-mask plans' rows), ``loader`` and
``trainer`` (the trainer label each shard records, ``trainers.versions``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from datamodels.devices import resolve_device
from datamodels.models import architecture
from datamodels.orchestrate.context import worker_name
from datamodels.plans import (
    checkpoint_epochs,
    checkpoint_ids,
    masks_for,
    plan_models,
    stored_plans,
    tmc_walk,
    training_weights,
)
from datamodels.store import models_table
from datamodels.store.checkpoints import write_checkpoints
from datamodels.store.guards import stored_ids_among
from datamodels.store.trainer_choice import write_trainer_choice
from datamodels.trainers.api import TrainOutcome, train_batch
from datamodels.trainers.null import NullData
from datamodels.trainers.outcome import CheckpointRequest
from datamodels.trainers.path_choice import take_choices
from datamodels.trainers.walk import walk_permutation

if TYPE_CHECKING:
    from datamodels.plans import PlannedModels
    from datamodels.stages.base import Unit


@dataclass
class Receipt:
    """What a task returns: never the data itself (that is in the shard)."""

    written: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (model_id, type, message)
    worker: str = ""
    checkpointed: list[int] = field(default_factory=list)  # models whose checkpoints were written
    skipped: list[int] = field(default_factory=list)  # trained, but already stored by another


class TrainTask:
    """The task side of the train stage (a mixin: see the module docstring)."""

    config: Any
    run: Any
    planned: PlannedModels
    _planned: PlannedModels | None
    stored: dict[str, list[np.ndarray]]
    loader: Any
    trainer: str | None = None

    def task_plan(self, ctx) -> None:
        """In a task: the plan table of this process (built once per worker and config)."""
        if self._planned is None:
            key = ("planned", self.config.hash, self.run.n_train)
            self._planned = ctx.cached(key, lambda: plan_models(self.config, self.run.n_train))

    def compute(self, ctx, unit: Unit, shared=None) -> Receipt:
        res = self.config.resources
        torch.set_num_threads(res.threads_per_task or max(1, int(res.num_cpus)))
        self.task_plan(ctx)
        if not architecture(self.config.model.arch).trains:  # sizes only: no beton decoded
            data = NullData(*self.run.sizes())
        else:
            data = ctx.data(self.run, self.config, resolve_device(res.device))
        receipt = Receipt(worker=worker_name())
        if unit.payload[0] == "walk":
            _, plan, perm, _, attempt = unit.payload
            spec = self.config.plan(plan)
            walk = tmc_walk(self.config, spec, perm, data.n_train, self.planned)
            planned, masks, outcome = walk_permutation(
                walk,
                spec,
                data.n_train,
                self.config.resources.models_per_task,
                lambda chosen: self.train_models(data, chosen, receipt),
            )
            self.write_shard(planned, masks, outcome, np.asarray(attempt), receipt)
            return receipt
        _, ids, tries, stored = unit.payload
        planned = self.planned.select_ids(np.asarray(ids, dtype=np.int64))
        masks, outcome = self.train_models(data, planned, receipt)
        fresh = np.flatnonzero(~np.isin(planned.model_id, list(stored)))
        self.write_shard(
            planned.take(fresh),
            masks[fresh],
            outcome.take(fresh),
            np.asarray(tries)[fresh],
            receipt,
        )
        return receipt

    def train_models(self, data, planned, receipt: Receipt) -> tuple[np.ndarray, TrainOutcome]:
        """(masks, outcome) of the ``planned`` models, trained; the checkpoints
        ``config.checkpoints`` asks for are written."""
        wanted = np.isin(planned.model_id, checkpoint_ids(self.config, self.planned))
        request = (
            CheckpointRequest(
                tuple(np.flatnonzero(wanted).tolist()), checkpoint_epochs(self.config)
            )
            if wanted.any()
            else None
        )
        masks = masks_for(self.config, planned, data.n_train, self.stored)
        # kinds with example weights (single_model): batches from the full set, dropped points
        # weighted 0; the stored mask stays the kept set
        order, weights = training_weights(self.config, planned, masks)
        outcome = train_batch(
            order, planned.seed, data, self.config, loader=self.loader, checkpoints=request,
            example_weights=weights,
        )
        for choice in take_choices():  # the trainer path this process chose, for status
            write_trainer_choice(self.run.fs, choice.record())
        keep = [s for s in outcome.snapshots if not outcome.failed[s.row]]
        if keep:
            write_checkpoints(
                self.run.fs,
                self.config.model.arch,
                [(int(planned.model_id[s.row]), s.epoch, s.lr, s.params) for s in keep],
            )
            receipt.checkpointed += sorted({int(planned.model_id[s.row]) for s in keep})
        for row in np.flatnonzero(outcome.failed):
            receipt.failed.append(
                (
                    int(planned.model_id[row]),
                    "NonFiniteLoss",
                    "training produced a non-finite loss or margin "
                    f"(loss={outcome.train_loss[row]})",
                )
            )
        return masks, outcome

    def write_shard(
        self,
        planned,
        masks: np.ndarray,
        outcome: TrainOutcome,
        attempts: np.ndarray,
        receipt: Receipt,
    ) -> None:
        """One shard with the models of ``planned`` that trained cleanly and that no shard holds
        yet (another writer may have stored some while this task trained: a superseded
        driver's late task, a retried unit); those are dropped (``receipt.skipped``)."""
        ok = ~outcome.failed
        if not ok.any():
            return
        stored = stored_ids_among(self.run, planned.model_id[ok])
        if stored.size:
            already = np.isin(planned.model_id, stored)
            receipt.skipped += [int(i) for i in planned.model_id[ok & already]]
            ok &= ~already
            if not ok.any():
                return
        # stored-mask plans record the fraction their mask keeps (not known at plan time)
        alphas = np.where(
            np.isin(planned.plan, stored_plans(self.config)), masks.mean(axis=1), planned.alpha
        )
        table = models_table(
            model_ids=planned.model_id[ok],
            plan=planned.plan[ok],
            alphas=alphas[ok],
            seeds=planned.seed[ok],
            masks=masks[ok],
            margins=outcome.margins[ok],
            train_loss=outcome.train_loss[ok],
            eval_accuracy=outcome.eval_accuracy[ok],
            seconds=outcome.seconds[ok],
            attempt=np.broadcast_to(np.asarray(attempts, np.int32), ok.shape)[ok],
            worker=receipt.worker,
            trainer=self.trainer,
        )
        self.run.write_models(table, config_hash=self.config.hash)
        receipt.written += [int(i) for i in planned.model_id[ok]]
