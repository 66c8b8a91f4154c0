"""The ``train`` stage: every planned model trained once, its mask and margins in ``models/``.

Units are batches of model ids not yet stored (``resources.models_per_task``, spread over
the cluster's slots) and tmc permutation walks (one unit walks one permutation). A unit
trains its models with ``train_batch`` and writes one shard (`Run.write_models`: temp name,
validate, rename); its result is a small `Receipt`. Resume lists the ids in valid shards
(torn or wrong-schema shards are moved to ``models/_invalid/`` first, so their models are
trained again). A model whose loss or margins are not finite, or whose task raised, spends
one attempt (``failures.parquet``) and is retried in smaller batches until
``resources.max_attempts``; a worker that dies is first retried by the executor and costs
no attempt. Checkpoints (``config.checkpoints``) are written by the task that trains the
model; a stored model whose checkpoints are missing is retrained (same seed) to save them.

**Shards of the plan** (``shard=(I, N)``, ``datamodels train --shard I/N``, 0-based): the stage
takes only the planned models with ``model_id % N == I`` (a tmc walk by its first id), so N
workers that run at once (array jobs, no Ray) never train the same model, and their shards
are the ones a Ray run writes: either can finish the run. A shard worker holds the run's
lock in shared mode, writes no stage marker (the run is complete only when every shard is),
and serialises its appends to ``failures.parquet`` with the other workers.

Each shard records its trainer's code version (``trainers.versions``); ``start`` refuses a
plan whose stored models another trainer version made, and a bump makes ``train`` stale.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from datamodels.config import Config
from datamodels.errors import InfrastructureError, RunMismatchError, StoreError
from datamodels.orchestrate.executor import error_text, error_type, infrastructure_error
from datamodels.orchestrate.train_task import Receipt, TrainTask
from datamodels.plans import (
    checkpoint_epochs,
    checkpoint_ids,
    stored_masks,
    stored_plans,
    tmc_walk_state,
    walk_plans,
)
from datamodels.stages.base import Stage, TaskResources, Unit
from datamodels.stages.versions import trainer_part_versions
from datamodels.store import PLAN_MASKS_DIR, Run
from datamodels.store.beton import data_path
from datamodels.store.checkpoints import complete_models
from datamodels.store.compact import compacting_witness, recover_compaction
from datamodels.store.lock import mutex
from datamodels.trainers.api import resolve_loader, trainer_versions
from datamodels.trainers.versions import mixed_trainers, trainer_label

__all__ = ["Receipt", "TrainStage", "TrainSummary"]


@dataclass
class TrainSummary:
    planned: int
    already_done: int
    trained: int = 0
    failed: int = 0
    quarantined: list[str] = field(default_factory=list)
    checkpointed: int = 0  # models whose checkpoints this call wrote


class TrainStage(TrainTask, Stage):
    """The driver's half; the task's (`compute`, `train_models`, `write_shard`) is `TrainTask`."""

    name = "train"
    what = "models"
    refingerprint_after_finish = True

    def __init__(self, config: Config, run: Run, shard: tuple[int, int] | None = None) -> None:
        super().__init__(config, run)
        self.shard = shard
        _ = self.planned  # built once here, in the driver; tasks receive it with the stage
        self.loader = resolve_loader(config, run.fs.size(data_path(run)))
        self.trainer_parts = trainer_versions(config, self.loader)
        self.trainer = trainer_label(self.trainer_parts)  # what each shard records
        # stored-mask plans: their rows (small: removed positions), read once in the driver;
        # a plan whose table is not written yet waits (`waiting_plans`)
        self.stored = stored_masks(config, run)
        self.attempts: Counter = Counter()
        self.infrastructure_failures: Counter = Counter()  # by unit name: never a model's attempt
        self.summary = TrainSummary(0, 0)
        self._counts = (0, 0)

    def __getstate__(self) -> dict:
        # Tasks take the plan from their process's context (built once per worker) rather
        # than with every copy of the stage: the driver then holds the plan table once, not
        # once more in the object store (about 50 bytes a model).
        return {**self.__dict__, "_planned": None}

    # -- the contract ----------------------------------------------------------------------

    def fingerprint(self) -> dict:
        wanted = checkpoint_ids(self.config, self.planned)
        saved = (
            complete_models(self.run.fs, wanted, checkpoint_epochs(self.config))
            if len(wanted)
            else set()
        )
        return {
            "config": self.config.hash,
            "checkpoints": self.config.checkpoints.model_dump(mode="json"),
            "max_attempts": self.config.resources.max_attempts,
            "checkpointed": sorted(saved),
            "models": self.run.fs.stats("models", ".parquet"),
            "failures": self.run.fs.stats("", "failures.parquet"),
        } | (
            {"plan_masks": self.run.fs.stats(PLAN_MASKS_DIR, ".parquet")}
            if stored_plans(self.config)
            else {}
        ) | compacting_witness(self.run.fs)  # leftovers of a compaction: start() repairs them

    def versions(self) -> dict[str, int]:
        return trainer_part_versions(self.trainer_parts)

    def nothing_to_do(self) -> str:
        return "train: every planned model is done or out of attempts; nothing to do"

    def idle_message(self) -> str:
        return (
            f"train: all {self.summary.planned} planned models are done or out of attempts; "
            "nothing to do"
        )

    def is_complete(self) -> bool:
        return self.shard is None and super().is_complete()

    def write_marker(self) -> None:
        if self.shard is None:  # one shard done is not the run done
            super().write_marker()

    def start(self) -> None:
        """Refuse an unwritable run directory (it would fail every model); set aside bad shards
        (their models are trained again); read the attempts spent."""
        self.run.fs.check_writable("models")
        if self.shard is None:  # models an interrupted compaction stashed count as stored
            recover_compaction(self.run)
        try:
            moved = self.run.quarantine_bad_shards(pages=self.shard is None)  # not N workers
        except (StoreError, OSError):
            if self.shard is None:
                raise
            moved = []  # another shard worker moved it first; the next listing shows that
        for problem in moved:
            self.summary.quarantined.append(f"{problem.file} ({problem.kind}: {problem.message})")
        if mixed := mixed_trainers(self.run.trainers_by_plan(), self.trainer_parts):
            raise RunMismatchError(f"train: {mixed}; train into a new run directory (--out DIR), "
                                   f"or resume {self.run.uri} with the release that made them")
        self.attempts = Counter(self.run.failures()["model_id"].astype(int).tolist())

    def outputs(self) -> list[str]:
        return ["examples.parquet", data_path(self.run)]

    def resources(self) -> TaskResources:
        res = self.config.resources
        return TaskResources(res.num_cpus, res.num_gpus, res.task_retries, res.max_in_flight)

    def mine(self, model_ids: np.ndarray) -> np.ndarray:
        """bool[k]: which of ``model_ids`` this stage trains (all, or those of its shard)."""
        model_ids = np.asarray(model_ids, dtype=np.int64)
        if self.shard is None:
            return np.ones(len(model_ids), dtype=bool)
        index, count = self.shard
        return model_ids % count == index

    def out_of_attempts(self, model_ids: np.ndarray) -> np.ndarray:
        """bool[k]: models whose attempt budget is spent (the failures table is small)."""
        budget = self.config.resources.max_attempts
        spent = np.array([m for m, n in self.attempts.items() if n >= budget], dtype=np.int64)
        return np.isin(model_ids, spent)

    def units(self) -> list[Unit]:
        """The models not yet stored, in batches, and the tmc walks not yet walked. Array
        operations over the plan: no Python object per planned model."""
        done = self.run.stored_model_ids()
        ids = self.planned.model_id
        skipped = self.tmc_plans() + self.waiting_plans()
        plain = ids[~np.isin(self.planned.plan, skipped) & self.mine(ids)]
        wanted = checkpoint_ids(self.config, self.planned)
        wanted = wanted[self.mine(wanted)]
        have = (
            complete_models(self.run.fs, wanted, checkpoint_epochs(self.config))
            if len(wanted)
            else set()
        )
        stored_ids = wanted[
            np.isin(wanted, done)
            & ~np.isin(wanted, np.fromiter(have, np.int64, len(have)))
            & ~self.out_of_attempts(wanted)
        ]
        stored = set(stored_ids.tolist())  # checkpointed models only: a few
        is_done = np.isin(plain, done)
        missing = plain[(~is_done | np.isin(plain, stored_ids)) & ~self.out_of_attempts(plain)]
        walks = {
            key: state
            for key, state in self.walk_state(set(done.tolist()) if self.tmc_plans() else set())
            .items()
            if self.mine(np.array([state[0]]))[0]
        }
        budget = self.config.resources.max_attempts
        units = self.batches(missing, self.config.resources.models_per_task, stored)
        units += [
            self.walk_unit(plan, perm, rep)
            for (plan, perm), (rep, present) in walks.items()
            if not present and self.attempts[rep] < budget
        ]
        n_done = int(is_done.sum()) + sum(present for _, present in walks.values())
        self._counts = (len(plain) + len(walks) + len(stored), n_done)
        self.summary.planned, self.summary.already_done = len(plain) + len(walks), n_done
        return units

    def walk_state(self, done: set[int]) -> dict:
        return tmc_walk_state(self.config, self.planned, self.run.n_train, done)

    def done(self, unit: Unit) -> bool:
        return False  # units() lists only the models that are not stored

    def progress_counts(self, units: list[Unit], todo: list[Unit]) -> tuple[int, int]:
        return self._counts

    def finish(self) -> TrainSummary:
        return self.summary

    def up_to_date(self) -> TrainSummary:
        done = self.run.stored_model_ids()
        walks = self.walk_state(set(done.tolist()) if self.tmc_plans() else set())
        skipped = self.tmc_plans() + self.waiting_plans()
        plain = self.planned.model_id[~np.isin(self.planned.plan, skipped)]
        n_done = int(np.isin(plain, done).sum()) + sum(p for _, p in walks.values())
        return TrainSummary(len(plain) + len(walks), n_done)

    # -- in the driver -----------------------------------------------------------------------

    def tmc_plans(self) -> list[str]:
        """Plans trained as permutation walks (one unit per walk, not per model)."""
        return walk_plans(self.config)

    def waiting_plans(self) -> list[str]:
        """Stored-mask plans whose ``plan_masks/<plan>.parquet`` is not written yet: skipped
        (a ``removal`` plan's table is written by the removal stage, after fit/estimate)."""
        return [name for name in stored_plans(self.config) if name not in self.stored]

    def spread(self, units: list[Unit], slots: int) -> list[Unit]:
        """Smaller batches when there are fewer models than slots × models_per_task, so that
        every slot gets work."""
        batches = [u.payload for u in units if u.payload[0] == "models"]
        ids = np.concatenate([p[1] for p in batches]) if batches else np.zeros(0, np.int64)
        size = max(1, min(self.config.resources.models_per_task, -(-max(len(ids), 1) // slots)))
        stored = {int(i) for p in batches for i in p[3]}
        return self.batches(ids, size, stored) + [u for u in units if u.payload[0] == "walk"]

    def walk_unit(self, plan: str, perm: int, rep: int) -> Unit:
        return Unit(f"walk-{plan}-{perm}", ("walk", plan, perm, rep, self.attempts[rep] + 1))

    def batches(self, ids, size: int, stored: set[int] = frozenset()) -> list[Unit]:
        """Units of at most ``size`` of ``ids``; their ids (and attempt numbers) are int64 and
        int32 arrays, so a million planned models are a few arrays, not a million objects."""
        ids = np.asarray(ids, dtype=np.int64)
        failed = np.fromiter(self.attempts.keys(), np.int64, len(self.attempts))
        units = []
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            tries = np.ones(len(chunk), dtype=np.int32)
            for row in np.flatnonzero(np.isin(chunk, failed)):
                tries[row] += self.attempts[int(chunk[row])]
            kept = tuple(int(i) for i in chunk if int(i) in stored) if stored else ()
            units.append(
                Unit(
                    f"models-{chunk[0]}-{chunk[-1]}-{len(chunk)}",
                    ("models", chunk, tries, kept),
                    size=len(chunk),
                )
            )
        return units

    def model_ids(self, unit: Unit) -> list[int]:
        return [unit.payload[3]] if unit.payload[0] == "walk" else list(unit.payload[1])

    def record_failures(self, rows: list[tuple[int, str, str, str]]) -> list[int]:
        """Log failed attempts (model_id, error_type, message, worker); returns the ids that
        may be tried again."""
        if not rows:
            return []
        frame = []
        for model_id, kind, message, worker in rows:
            model_id = int(model_id)
            self.attempts[model_id] += 1
            row = int(np.searchsorted(self.planned.model_id, model_id))
            frame.append(
                {
                    "model_id": model_id,
                    "plan": str(self.planned.plan[row]),
                    "attempt": self.attempts[model_id],
                    "error_type": kind,
                    "message": message[:2000],
                    "worker": worker,
                }
            )
        if self.shard is None:
            self.run.append_failures(pd.DataFrame(frame))
        else:  # other shard workers append too: one read-modify-write at a time
            with mutex(self.run.fs, "failures"):
                self.run.append_failures(pd.DataFrame(frame))
        return [m for m, *_ in rows if self.attempts[m] < self.config.resources.max_attempts]

    def retry_units(self, unit: Unit, ids: list[int]) -> list[Unit]:
        if not ids:
            return []
        if unit.payload[0] == "walk":
            return [self.walk_unit(*unit.payload[1:4])]
        return self.batches(ids, max(1, len(unit.payload[1]) // 4), set(unit.payload[3]))

    def on_result(self, unit: Unit, receipt: Receipt, progress) -> list[Unit]:
        self.summary.trained += len(receipt.written)
        self.summary.checkpointed += len(receipt.checkpointed)
        rechecked = (
            len(set(receipt.checkpointed) & set(unit.payload[3]))
            if unit.payload[0] == "models"
            else 0
        )
        stored = len(receipt.written) + len(receipt.skipped)  # skipped: stored by another
        progress.advance(1 if unit.payload[0] == "walk" else stored + rechecked)
        retry = self.record_failures(
            [(m, kind, text, receipt.worker) for m, kind, text in receipt.failed]
        )
        progress.failed_attempt(len(receipt.failed), len(receipt.failed) - len(retry))
        self.summary.failed = progress.given_up
        if unit.payload[0] == "walk":
            return []  # the walk's shard is written: walking it again would store its ids twice
        return self.retry_units(unit, retry)

    def on_failure(self, unit: Unit, error: BaseException, progress) -> list[Unit]:
        ids = self.model_ids(unit)
        if unit.payload[0] == "walk":
            _, plan, perm, _, _ = unit.payload
            walks = self.walk_state(self.run.done_model_ids())
            if walks[(plan, perm)][1]:  # its shard made it before the task died
                progress.advance(1)
                return []
        if unit.payload[0] == "models":
            # the task may have died after its shard was renamed into place (a lost receipt):
            # those models are stored, so they are neither failures nor trained again
            now = np.asarray(ids, dtype=np.int64)
            now = now[np.isin(now, self.run.stored_model_ids())]
            stored = set(now.tolist()) - set(unit.payload[3])
            if stored:
                self.summary.trained += len(stored)
                progress.advance(len(stored))
                ids = [i for i in ids if i not in stored]
        if not ids:
            return []
        if infrastructure_error(error):
            return self.infrastructure_retry(unit, ids, error, progress)
        retry = self.record_failures([(m, error_type(error), error_text(error), "") for m in ids])
        progress.failed_attempt(len(ids), len(ids) - len(retry))
        self.summary.failed = progress.given_up
        return self.retry_units(unit, retry)

    def infrastructure_retry(
        self, unit: Unit, ids: list[int], error: BaseException, progress
    ) -> list[Unit]:
        """The machine failed, not (yet) the models. A full or read-only disk stops training at
        once (retrying cannot help). Anything else (a lost worker, memory, a crash) runs the
        unit again in halves, spending no attempt, so an oversized batch heals itself; a
        single model that keeps crashing its worker (``max(3, max_attempts)`` times) is
        charged one attempt each further time, so it fails for good in the end."""
        import errno

        cause = getattr(error, "cause", error)
        text = f"{error_type(error)}: {error_text(error)}"
        fatal = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
        if isinstance(cause, OSError) and cause.errno in fatal:
            where = cause.filename or self.run.fs.display("models")
            raise InfrastructureError(
                f"training stopped: {text} (writing {where}); no model's attempt budget was "
                "spent: free space or fix permissions and rerun"
            ) from None
        if unit.payload[0] == "walk":
            key = unit.name
        elif len(ids) > 1:
            half = -(-len(ids) // 2)
            return self.batches(ids, half, set(unit.payload[3]))
        else:
            key = f"model-{ids[0]}"
        self.infrastructure_failures[key] += 1
        if self.infrastructure_failures[key] < max(3, self.config.resources.max_attempts):
            return (
                [self.walk_unit(*unit.payload[1:4])]
                if unit.payload[0] == "walk"
                else (self.batches(ids, 1, set(unit.payload[3])))
            )
        retry = self.record_failures([(m, error_type(error), error_text(error), "") for m in ids])
        progress.failed_attempt(len(ids), len(ids) - len(retry))
        self.summary.failed = progress.given_up
        return self.retry_units(unit, retry)
