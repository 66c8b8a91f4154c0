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
from datamodels.plans import PlannedModels, masks_for, plan_models
from datamodels.stages import BETON_PATH, num_classes
from datamodels.store import Run, models_schema, models_table, shard_name, write_table_atomic
from datamodels.train.api import train_batch
from datamodels.train.data import TrainData, load_train_data

_CACHE: dict[tuple[str, str, str], tuple[TrainData, PlannedModels]] = {}


@dataclass
class Receipt:
    """What a task returns: never the data itself (that is in the shard)."""

    shard: str | None
    written: list[int]
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (model_id, error_type, message)
    worker: str = ""
    seconds: float = 0.0


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
        _CACHE[key] = (data, plan_models(config))
    return _CACHE[key]


def train_shard(
    run_uri: str, config_text: str, model_ids: list[int], attempts: list[int], loader: str,
    fault_nan_ids: tuple[int, ...] = (),
) -> Receipt:
    """Train ``model_ids`` and write one shard with the models that trained cleanly."""
    config = config_from_yaml_text(config_text)
    threads = config.resources.threads_per_task or max(1, int(config.resources.num_cpus))
    torch.set_num_threads(threads)
    device = resolve_device(config)
    data, planned_all = load_context(run_uri, config, device)
    planned = planned_all.select_ids(np.asarray(model_ids, dtype=np.int64))
    masks = masks_for(config, planned, data.n_train)
    lr_scale = np.where(np.isin(planned.model_id, fault_nan_ids), np.inf, 1.0) if fault_nan_ids else None
    outcome = train_batch(masks, planned.seed, data, config, loader=loader, lr_scale=lr_scale)
    ok = ~outcome.failed
    worker = worker_name()
    receipt = Receipt(shard=None, written=[], worker=worker, seconds=float(outcome.seconds.sum()))
    for row in np.flatnonzero(outcome.failed):
        loss = outcome.train_loss[row]
        receipt.failed.append(
            (int(planned.model_id[row]), "NonFiniteLoss", f"training produced a non-finite loss or margin (loss={loss})")
        )
    if ok.any():
        ids = planned.model_id[ok]
        table = models_table(
            model_ids=ids, plan=planned.plan[ok], alphas=planned.alpha[ok], seeds=planned.seed[ok],
            masks=masks[ok], margins=outcome.margins[ok], train_loss=outcome.train_loss[ok],
            eval_accuracy=outcome.eval_accuracy[ok], seconds=outcome.seconds[ok],
            attempt=np.asarray(attempts, dtype=np.int32)[ok], worker=worker,
        )
        run = Run(run_uri)
        name = shard_name(ids)
        write_table_atomic(run.fs, f"models/{name}", table, models_schema(data.n_train, len(data.eval_y)))
        receipt.shard, receipt.written = name, [int(i) for i in ids]
    return receipt
