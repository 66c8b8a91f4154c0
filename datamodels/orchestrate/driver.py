"""The Ray driver for the ``train`` stage: schedule what is missing, keep a bounded number of
tasks in flight, retry, record failures, show progress.

Resume is the default: the driver lists the model ids already present in valid shards
(torn or wrong-schema shards are moved to ``models/_invalid/`` so their models are trained
again), skips models whose attempt budget is spent, and schedules the rest. Tasks write
their own shards; a task that Ray retries after a worker died rewrites the same shard name,
so no model is ever stored twice.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.console import Console

from datamodels.config import Config
from datamodels.orchestrate.progress import TrainProgress
from datamodels.orchestrate.worker import Receipt, train_shard, train_walk
from datamodels.plans import checkpoint_epochs, checkpoint_ids, plan_models, tmc_walk_state
from datamodels.stages import BETON_PATH, open_run, prepare
from datamodels.store import Run, valid_shards
from datamodels.store.checkpoints import complete_models
from datamodels.train.api import resolve_loader

FAULT_NAN_ENV = "DATAMODELS_FAULT_NAN_IDS"


@dataclass
class TrainSummary:
    planned: int
    already_done: int
    trained: int
    failed: int
    quarantined: list[str]
    checkpointed: int = 0  # models whose checkpoints this call wrote


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)


def _fault_ids() -> tuple[int, ...]:
    raw = os.environ.get(FAULT_NAN_ENV, "").strip()
    return tuple(int(x) for x in raw.split(",") if x.strip())


@dataclass
class Schedule:
    """What is left to train: plain model ids, and (plan, permutation) walks of tmc plans."""

    missing: np.ndarray  # int64 ids of non-tmc plans (including ``checkpoint_only``)
    checkpoint_only: set[int]  # stored models retrained only to save their checkpoints
    walks: list[tuple[str, int, int]]  # (plan, permutation, representative model id)
    attempts: Counter
    quarantined: list[str]
    done: int  # planned units already present (models, or walks for tmc plans)
    total: int


def schedule_state(config: Config, run: Run, console: Console | None = None) -> Schedule:
    good, problems = valid_shards(run)
    quarantined = []
    for problem in problems:
        if problem.kind in ("torn", "schema", "length") and problem.file:
            run.quarantine(problem.file, f"{problem.kind}: {problem.message}")
            quarantined.append(problem.file)
            if console:
                console.print(f"[yellow]moved bad shard {problem.file} to models/_invalid/ ({problem.kind}); its models will be retrained")
    done = run.done_model_ids()
    attempts = Counter(run.failures()["model_id"].astype(int).tolist())
    n_train = run.sizes()[0]
    planned = plan_models(config, n_train)
    budget = config.resources.max_attempts
    tmc_plans = {p.name for p in config.plans if p.kind == "tmc"}
    plain = ~np.isin(planned.plan, list(tmc_plans)) if tmc_plans else np.ones(len(planned), dtype=bool)
    plain_ids = planned.model_id[plain].tolist()
    wanted = checkpoint_ids(config, planned)
    have = complete_models(run.fs, wanted, checkpoint_epochs(config)) if len(wanted) else set()
    checkpoint_only = {int(i) for i in wanted if int(i) in done and int(i) not in have and attempts[int(i)] < budget}
    missing = np.array([i for i in plain_ids if (i not in done or i in checkpoint_only) and attempts[i] < budget],
                       dtype=np.int64)
    walks_state = tmc_walk_state(config, planned, n_train, done)
    walks = [(plan, perm, rep) for (plan, perm), (rep, present) in walks_state.items() if not present and attempts[rep] < budget]
    n_done = sum(i in done for i in plain_ids) + sum(present for _, present in walks_state.values())
    return Schedule(missing, checkpoint_only, walks, attempts, quarantined, n_done,
                    len(plain_ids) + len(walks_state) + len(checkpoint_only))


def _batches(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def train(
    config: Config, uri: str, address: str | None = None, show_progress: bool = True, console: Console | None = None
) -> TrainSummary:
    """Train every planned model that is not yet in ``uri``; returns a summary."""
    import ray

    console = console or Console(stderr=True)
    run = open_run(config, uri)
    prepare(config, run)
    state = schedule_state(config, run, console)
    missing, attempts, done_before, total = state.missing, state.attempts, state.done, state.total
    summary = TrainSummary(total - len(state.checkpoint_only), done_before, 0, 0, state.quarantined)
    if len(missing) == 0 and not state.walks:
        console.print(f"train: all {total} planned models are done or out of attempts; nothing to do")
        return summary

    init_ray(address)
    res = config.resources
    cpus = float(ray.cluster_resources().get("CPU", 1))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    slots = int(cpus // res.num_cpus) if res.num_gpus == 0 else int(min(cpus // res.num_cpus, gpus // res.num_gpus))
    if slots < 1:
        raise RuntimeError(
            f"the Ray cluster ({cpus:g} CPU, {gpus:g} GPU) cannot fit one task of "
            f"resources.num_cpus={res.num_cpus:g}, resources.num_gpus={res.num_gpus:g}; lower them"
        )
    in_flight_limit = res.max_in_flight or 2 * slots
    batch_size = max(1, min(res.models_per_task, -(-max(len(missing), 1) // slots)))
    beton = run.local_path(BETON_PATH)
    dataset_bytes = os.path.getsize(beton) if beton else 0
    loader = resolve_loader(config, dataset_bytes)
    # max_calls=0 keeps worker processes (and their decoded dataset) alive between tasks;
    # Ray's default for GPU tasks is a fresh process per task.
    task_options = dict(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_retries=res.task_retries,
                        retry_exceptions=False, max_calls=0)
    remote = ray.remote(**task_options)(train_shard)
    remote_walk = ray.remote(**task_options)(train_walk)
    config_text = config.to_yaml()
    faults = _fault_ids()
    queue: deque = deque(_batches(missing.tolist(), batch_size))
    queue.extend(state.walks)  # (plan, perm, representative id): one task walks one permutation
    pending: dict = {}
    failure_rows: list[dict] = []

    def submit(unit) -> None:
        if isinstance(unit, tuple):
            plan_name, perm, rep = unit
            ref = remote_walk.remote(run.uri, config_text, plan_name, perm, attempts[rep] + 1, loader, faults)
            pending[ref] = (unit, [rep])
            return
        tries = [attempts[i] + 1 for i in unit]
        stored = tuple(i for i in unit if i in state.checkpoint_only)
        pending[remote.remote(run.uri, config_text, unit, tries, loader, faults, stored)] = (unit, unit)

    def record_failure(model_id: int, error_type: str, message: str, worker: str) -> bool:
        """Log one failed attempt; True if the model may be tried again."""
        attempts[model_id] += 1
        plan = plan_of[model_id]
        failure_rows.append(
            {"model_id": model_id, "plan": plan, "attempt": attempts[model_id], "error_type": error_type,
             "message": message[:2000], "worker": worker}
        )
        return attempts[model_id] < res.max_attempts

    planned = plan_models(config, run.sizes()[0])
    plan_of = dict(zip(planned.model_id.tolist(), planned.plan.tolist(), strict=True))
    with TrainProgress(total, done_before, enabled=show_progress, console=console) as progress:
        while queue or pending:
            while queue and len(pending) < in_flight_limit:
                submit(queue.popleft())
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            unit, ids = pending.pop(ref)
            retry: list = []
            try:
                receipt: Receipt = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - worker death, OOM, bugs: all count as an attempt
                kind = type(err).__name__
                message = str(err).strip().splitlines()[-1] if str(err).strip() else kind
                retry = [i for i in ids if record_failure(i, kind, message, "")]
                progress.failed_attempt(len(ids), len(ids) - len(retry))
                if isinstance(unit, tuple):
                    retry = [unit] if retry else []
            else:
                summary.trained += len(receipt.written)
                summary.checkpointed += len(receipt.checkpointed)
                rechecked = len(set(receipt.checkpointed) & state.checkpoint_only)
                progress.advance(1 if isinstance(unit, tuple) else len(receipt.written) + rechecked)
                for model_id, kind, message in receipt.failed:
                    if record_failure(model_id, kind, message, receipt.worker) and not isinstance(unit, tuple):
                        retry.append(model_id)
                progress.failed_attempt(len(receipt.failed), len(receipt.failed) - len(retry))
            if failure_rows:
                run.append_failures(pd.DataFrame(failure_rows))
                failure_rows.clear()
            if retry and isinstance(retry[0], tuple):
                queue.extend(retry)
            elif retry:
                queue.extend(_batches(retry, max(1, batch_size // 4)))
    summary.failed = progress.given_up
    return summary
