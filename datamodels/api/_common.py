"""What every verb shares: the run a verb works on, and running one stage under the lock."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from datamodels.config import Config
from datamodels.stages.base import Stage, run_stage
from datamodels.store import Run
from datamodels.store.lock import writer


def as_run(run: str | Run) -> Run:
    return run if isinstance(run, Run) else Run(str(run))


def checked_run(config: Config, run: str | Run) -> Run:
    """The run directory, checked to be made from ``config`` (same hash)."""
    # torch: the prepare stage's module imports the data and training code
    from datamodels.stages.prepare import check_run

    run = as_run(run)
    check_run(config, run)
    return run


def config_and_run(
    first: Config | str | Run, second: Any, imports_code: bool = True
) -> tuple[Config, Run, bool]:
    """``(config, run, …)`` or ``(run, …)``: a verb on an existing run may leave the config
    out (the run's ``config.yaml`` is used; when the verb may import the code it names, the
    run must be trusted: `config.trust`). Returns (config, run, whether ``second`` was the
    run)."""
    # torch: the prepare stage's module imports the data and training code
    from datamodels.stages.prepare import load_run_config

    if isinstance(first, Config):
        return first, checked_run(first, second), True
    run = as_run(first)
    return load_run_config(run, imports_code), run, False


def ray_executor(executor: Any, address: str | None) -> Any:
    # torch: the executor module imports it
    from datamodels.orchestrate.executor import default_executor

    return executor or default_executor(address)


def locked(
    run: Run,
    stage: Stage,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> Any:
    """Run one stage while holding the run's writer lock."""
    with writer(run.fs):
        return run_stage(stage, executor, show_progress, console)
