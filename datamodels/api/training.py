"""The verbs that make models: prepare, train (with Ray, or one shard without), compact."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from datamodels.api._common import locked, ray_executor
from datamodels.config import Config
from datamodels.config.trust import remember
from datamodels.errors import ConfigError, StoreError
from datamodels.stages.base import run_stage
from datamodels.stages.status import clear_failures
from datamodels.store import Run
from datamodels.store.compact import COMPACTING_DIR, DEFAULT_TARGET_BYTES, compact_models
from datamodels.store.lock import writer


def prepare(
    config: Config, out: str | Run, show_progress: bool = False, console: Console | None = None
) -> bool:
    """Write the beton and ``examples.parquet`` (False when they exist); a new run's
    ``config.yaml`` is written only once they are (by the prepare stage)."""
    # torch: the prepare stage's module imports the data and training code
    from datamodels.stages.preflight import check_config  # torch: the estimator registry
    from datamodels.stages.prepare import PrepareStage, nothing_left_if_refused, open_run

    check_config(config)  # a config its later stages cannot run is refused before any write
    run = out if isinstance(out, Run) else Run(out)
    with nothing_left_if_refused(run), writer(run.fs):  # a refused config leaves nothing
        wrote = locked(
            open_run(config, run), PrepareStage(config, run), None, show_progress, console
        )
    remember(config, run.uri)  # made here from this config: its code may be imported later
    return wrote


def train(
    config: Config,
    out: str | Run,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
    retry_failed: bool = False,
    shard: tuple[int, int] | str | None = None,
):
    """Train every planned model not yet in the run; returns a `TrainSummary`.
    ``retry_failed``: models whose attempts are spent get a fresh budget. ``shard``: ``(I, N)``
    or ``"I/N"`` (0-based): only the missing models with ``model_id % N == I``, in this
    process without Ray, beside other shard workers (see `train_shard`)."""
    from datamodels.orchestrate.context import check_device  # torch: the device check
    from datamodels.orchestrate.executor import joined_cluster  # torch: the task context
    from datamodels.stages.preflight import check_local_gpus  # torch: the CUDA check
    from datamodels.stages.prepare import nothing_left_if_refused  # torch: as below
    from datamodels.stages.train import TrainStage  # torch: training

    if shard is not None:
        if retry_failed:
            raise ConfigError(
                "--retry-failed clears failures.parquet for the whole run: run it once "
                "without --shard, then start the shard workers"
            )
        return train_shard(config, out, shard, show_progress, console)

    joined = joined_cluster()  # a notebook's cluster (not a local one this process started)
    cluster = (
        address
        or getattr(executor, "address", None)
        or joined
        or (None if executor is not None else os.environ.get("RAY_ADDRESS"))
    )
    if cluster == "local":  # RAY_ADDRESS=local: a fresh Ray on this machine
        cluster = None
    check_device(config.resources.device, config.resources.num_gpus, cluster)
    check_local_gpus(config, cluster)
    run = out if isinstance(out, Run) else Run(out)
    with nothing_left_if_refused(run), writer(run.fs):  # a refused config leaves nothing
        prepare(config, run, console=console)
        if retry_failed:
            clear_failures(run)
        return locked(
            run, TrainStage(config, run), ray_executor(executor, address), show_progress, console
        )


def parse_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """``"I/N"`` or ``(I, N)`` -> ``(I, N)`` with ``0 <= I < N`` (0-based, as SLURM's
    ``--array=0-{N-1}``); anything else is a one-line `ConfigError`."""
    try:
        index, count = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (ValueError, TypeError):
        index, count = -1, 0
    if not 0 <= index < count:
        raise ConfigError(
            f"--shard {shard if isinstance(shard, str) else '/'.join(map(str, shard))}: "
            "expected I/N with 0 <= I < N (0-based: shards 0/N .. N-1/N, e.g. "
            "--shard $SLURM_ARRAY_TASK_ID/N with --array=0-N-1)"
        )
    return index, count


PREPARE_WAIT_S = 1800.0  # array jobs that start together queue behind the first one's prepare


def train_shard(
    config: Config,
    out: str | Run,
    shard: tuple[int, int] | str,
    show_progress: bool = True,
    console: Console | None = None,
):
    """Train shard ``I`` of ``N`` of the missing models in this process (no Ray): the planned
    models with ``model_id % N == I``, written as the same ``models/`` shards a Ray run
    writes. Any number of shard workers may run on one run at once (they hold the run lock
    in shared mode); the first prepares the run if it is not yet (exclusively, the others
    wait for it). Returns the shard's `TrainSummary`."""
    from datamodels.orchestrate.context import check_device  # torch: the device check
    from datamodels.orchestrate.executor import SerialExecutor  # torch: the executor
    from datamodels.stages.preflight import check_local_gpus  # torch: the CUDA check
    from datamodels.stages.prepare import check_run  # torch: the data code
    from datamodels.stages.train import TrainStage  # torch: training

    shard = parse_shard(shard)
    check_device(config.resources.device, config.resources.num_gpus, None)
    check_local_gpus(config, None)
    run = out if isinstance(out, Run) else Run(out)
    if not run.has_config():  # written last by prepare
        with writer(run.fs, wait_s=PREPARE_WAIT_S):
            prepare(config, run, console=console)
    with writer(run.fs, shared=True, wait_s=PREPARE_WAIT_S):
        check_run(config, run)
        if run.fs.entries(COMPACTING_DIR):  # its stashed models would be trained twice
            raise StoreError(
                f"{run.fs.display(COMPACTING_DIR)}: an interrupted compaction holds models; run "
                "`datamodels compact` on the run once, then start the shard workers"
            )
        return run_stage(
            TrainStage(config, run, shard=shard), SerialExecutor(), show_progress, console
        )


def compact(run: str | Run, target_rows: int | None = None, console: Console | None = None):
    """Merge the small shards of ``models/`` into large ones (`store.compact`), holding the
    run's writer lock; returns its `CompactSummary`."""
    run = run if isinstance(run, Run) else Run(run)
    with writer(run.fs):
        return compact_models(run, target_rows=target_rows, target_bytes=DEFAULT_TARGET_BYTES)
