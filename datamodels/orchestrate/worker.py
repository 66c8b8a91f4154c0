"""What runs inside a Ray worker: train a batch of planned models and write their shard.

Kept free of Ray imports so it can be called in-process too. A worker process caches the
decoded dataset and the plan table across tasks (keyed by run and config hash), so only the
first task in each process pays for decoding the beton.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datamodels.config import Config, config_from_yaml_text
from datamodels.plans import (
    PlannedModels,
    checkpoint_epochs,
    checkpoint_ids,
    masks_for,
    plan_models,
    tmc_walk,
)
from datamodels.stages import BETON_PATH, num_classes
from datamodels.store import Run, models_schema, models_table, shard_name, write_table_atomic
from datamodels.store.checkpoints import write_checkpoints
from datamodels.train.api import TrainOutcome, train_batch
from datamodels.train.data import TrainData, load_train_data
from datamodels.train.outcome import CheckpointRequest

_CACHE: dict[tuple[str, str, str], tuple[TrainData, PlannedModels]] = {}


@dataclass
class Receipt:
    """What a task returns: never the data itself (that is in the shard)."""

    shard: str | None
    written: list[int]
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (model_id, error_type, message)
    worker: str = ""
    seconds: float = 0.0
    checkpointed: list[int] = field(default_factory=list)  # models whose checkpoints were written


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _local_beton(run: Run, config_hash: str) -> str:
    local = run.local_path(BETON_PATH)
    if local is not None:
        return local
    cached = Path(tempfile.gettempdir()) / "datamodels-cache" / f"{config_hash}.beton"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(run.fs.read_bytes(BETON_PATH))
        os.replace(tmp, cached)
    return str(cached)


def resolve_device(config: Config) -> str:
    if config.resources.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.resources.device


def load_context(run_uri: str, config: Config, device: str) -> tuple[TrainData, PlannedModels]:
    key = (run_uri, config.hash, device)
    if key not in _CACHE:
        run = Run(run_uri)
        examples = run.examples()
        data = load_train_data(_local_beton(run, config.hash), examples, num_classes(examples), device)
        _CACHE.clear()
        _CACHE[key] = (data, plan_models(config, data.n_train))
    return _CACHE[key]


def _setup(config: Config, run_uri: str) -> tuple[TrainData, PlannedModels]:
    threads = config.resources.threads_per_task or max(1, int(config.resources.num_cpus))
    torch.set_num_threads(threads)
    return load_context(run_uri, config, resolve_device(config))


def _train_and_write(
    run_uri: str, config: Config, data: TrainData, planned: PlannedModels, masks: np.ndarray,
    attempts: np.ndarray, loader: str, fault_nan_ids: tuple[int, ...], receipt: Receipt | None = None,
    write: bool = True, already_stored: tuple[int, ...] = (),
) -> tuple[Receipt, TrainOutcome]:
    """Train the planned models; write the checkpoints ``config.checkpoints`` asks for, then
    (unless ``write`` is False) the clean models not ``already_stored`` as one shard."""
    lr_scale = np.where(np.isin(planned.model_id, fault_nan_ids), np.inf, 1.0) if fault_nan_ids else None
    wanted = np.isin(planned.model_id, checkpoint_ids(config, plan_models(config, data.n_train)))
    request = CheckpointRequest(tuple(np.flatnonzero(wanted).tolist()), checkpoint_epochs(config)) if wanted.any() else None
    outcome = train_batch(masks, planned.seed, data, config, loader=loader, lr_scale=lr_scale, checkpoints=request)
    receipt = receipt or Receipt(shard=None, written=[], worker=worker_name())
    if outcome.snapshots:
        keep = [s for s in outcome.snapshots if not outcome.failed[s.row]]
        write_checkpoints(Run(run_uri).fs, config.model.arch,
                          [(int(planned.model_id[s.row]), s.epoch, s.lr, s.params) for s in keep])
        receipt.checkpointed += sorted({int(planned.model_id[s.row]) for s in keep})
    receipt.seconds += float(outcome.seconds.sum())
    for row in np.flatnonzero(outcome.failed):
        loss = outcome.train_loss[row]
        receipt.failed.append(
            (int(planned.model_id[row]), "NonFiniteLoss", f"training produced a non-finite loss or margin (loss={loss})")
        )
    if write:
        fresh = ~np.isin(planned.model_id, list(already_stored))
        if fresh.any():
            write_models(run_uri, data, planned.take(np.flatnonzero(fresh)), masks[fresh],
                         outcome.take(np.flatnonzero(fresh)), np.broadcast_to(attempts, fresh.shape)[fresh], receipt)
    return receipt, outcome


def write_models(
    run_uri: str, data: TrainData, planned: PlannedModels, masks: np.ndarray, outcome: TrainOutcome,
    attempts: np.ndarray, receipt: Receipt,
) -> None:
    ok = ~outcome.failed
    if not ok.any():
        return
    ids = planned.model_id[ok]
    table = models_table(
        model_ids=ids, plan=planned.plan[ok], alphas=planned.alpha[ok], seeds=planned.seed[ok],
        masks=masks[ok], margins=outcome.margins[ok], train_loss=outcome.train_loss[ok],
        eval_accuracy=outcome.eval_accuracy[ok], seconds=outcome.seconds[ok],
        attempt=np.broadcast_to(np.asarray(attempts, dtype=np.int32), ok.shape)[ok], worker=receipt.worker,
    )
    name = shard_name(ids)
    write_table_atomic(Run(run_uri).fs, f"models/{name}", table, models_schema(data.n_train, len(data.eval_y)))
    receipt.shard, receipt.written = name, receipt.written + [int(i) for i in ids]


def train_shard(
    run_uri: str, config_text: str, model_ids: list[int], attempts: list[int], loader: str,
    fault_nan_ids: tuple[int, ...] = (), already_stored: tuple[int, ...] = (),
) -> Receipt:
    """Train ``model_ids`` and write one shard with the models that trained cleanly (those
    ``already_stored`` are retrained only to save their checkpoints: same seed, same model)."""
    config = config_from_yaml_text(config_text)
    data, planned_all = _setup(config, run_uri)
    planned = planned_all.select_ids(np.asarray(model_ids, dtype=np.int64))
    masks = masks_for(config, planned, data.n_train)
    receipt, _ = _train_and_write(run_uri, config, data, planned, masks, np.asarray(attempts), loader, fault_nan_ids,
                                  already_stored=tuple(already_stored))
    return receipt


def train_walk(
    run_uri: str, config_text: str, plan_name: str, perm: int, attempt: int, loader: str,
    fault_nan_ids: tuple[int, ...] = (),
) -> Receipt:
    """Walk permutation ``perm`` of a tmc plan: the full-data model first, then prefixes of
    growing length in chunks, until test accuracy has stayed within ``tolerance`` of the
    full-data model's for ``patience`` consecutive prefixes. One shard holds the walk."""
    config = config_from_yaml_text(config_text)
    plan = config.plan(plan_name)
    data, planned_all = _setup(config, run_uri)
    n = data.n_train
    walk = tmc_walk(config, plan, perm, n, planned_all)
    seeds = plan.seeds
    receipt = Receipt(shard=None, written=[], worker=worker_name())
    parts: list[tuple[PlannedModels, np.ndarray, TrainOutcome]] = []

    def run_steps(steps: np.ndarray) -> np.ndarray:
        rows = (steps[:, None] * seeds + np.arange(seeds)[None, :]).reshape(-1)
        chosen = walk.take(rows)
        masks = masks_for(config, chosen, n)
        _, outcome = _train_and_write(run_uri, config, data, chosen, masks, np.asarray(attempt), loader,
                                      fault_nan_ids, receipt, write=False)
        parts.append((chosen, masks, outcome))
        accuracy = np.where(outcome.failed, np.nan, outcome.eval_accuracy).reshape(len(steps), seeds)
        return np.nanmean(accuracy, axis=1) if seeds > 1 else accuracy[:, 0]

    full_accuracy = float(run_steps(np.array([n]))[0])
    chunk = max(1, config.resources.models_per_task // seeds)
    within, step = 0, 0
    while step < n and within < plan.patience:
        steps = np.arange(step, min(n, step + chunk))
        accuracy = run_steps(steps)
        for value in accuracy:
            within = within + 1 if abs(value - full_accuracy) <= plan.tolerance else 0
            if within >= plan.patience:
                break
        step = int(steps[-1]) + 1
    chosen = PlannedModels(*(np.concatenate([getattr(p[0], f) for p in parts]) for f in PlannedModels.__dataclass_fields__))
    masks = np.concatenate([p[1] for p in parts])
    outcome = TrainOutcome(*(np.concatenate([getattr(p[2], f) for p in parts]) for f in TrainOutcome.ARRAYS))
    order = np.argsort(chosen.model_id)
    ordered = outcome.take(order)
    write_models(run_uri, data, chosen.take(order), masks[order], ordered, np.asarray(attempt), receipt)
    return receipt
