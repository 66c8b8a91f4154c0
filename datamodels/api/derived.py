"""The verbs that derive tables from a trained run (alpha effect, LDS curve, the transfer
counterfactual), and what state each stage of a run is in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from datamodels.api._common import as_run, config_and_run, locked
from datamodels.api.training import train
from datamodels.config import Config
from datamodels.store import Run
from datamodels.store.lock import writer

if TYPE_CHECKING:
    from datamodels.applications.transfer import Counterfactual


def alpha_effect(
    run: str | Run,
    k: int = 10,
    holdout: float = 0.2,
    models_per_level: int | None = None,
) -> pd.DataFrame:
    """The effect of subset size α (stage ``alpha_effect``): datamodels per α level of the
    run, written to ``applications/alpha_effect.parquet`` (nothing recomputed when it is
    current for these settings); returns the table."""
    # torch: the stage fits datamodels with the fit stage's regression
    from datamodels.stages.alpha_effect import AlphaEffectStage

    config, run, _ = config_and_run(as_run(run), None, imports_code=False)
    stage = AlphaEffectStage(config, run, k, holdout, models_per_level)
    return locked(run, stage, None, False)


def lds_curve(run: str | Run, counts: tuple[int, ...] | None = None) -> pd.DataFrame:
    """LDS against the number of models (stage ``lds_curve``), written to
    ``applications/lds_curve.parquet`` (nothing recomputed when it is current); returns the
    table."""
    # torch: the stage fits datamodels with the fit stage's regression
    from datamodels.stages.lds_curve import LdsCurveStage

    config, run, _ = config_and_run(as_run(run), None, imports_code=False)
    return locked(run, LdsCurveStage(config, run, counts), None, False)


def transfer_counterfactual(
    config: Config | str | Run,
    run: str | Run | None = None,
    k: int = 4,
    plan: str | None = None,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = False,
    console: Console | None = None,
) -> Counterfactual:
    """A transfer run's counterfactual (`stages.transfer_counterfactual`): the ``k`` most
    harmful source classes left out of mask 1 of the config's stored plan, its models
    trained through ``train``, target accuracy compared. The masks are written once (a call
    that would remove other classes is refused). ``transfer_counterfactual(config, run)`` or
    ``transfer_counterfactual(run)``."""
    # torch: the counterfactual's stages read the applications' transfer tables
    from datamodels.applications.transfer import read_counterfactual
    from datamodels.stages.transfer_counterfactual import (  # torch: as above
        TransferCounterfactualStage,
        TransferMasksStage,
    )

    config, run, _ = config_and_run(config, run)
    with writer(run.fs):
        locked(run, TransferMasksStage(config, run, k, plan), None, False, console)
        train(config, run, address, executor, show_progress, console)
        locked(run, TransferCounterfactualStage(config, run, k, plan), None, False, console)
    return read_counterfactual(run)


def stage_states(run: str | Run, config: Config | None = None) -> pd.DataFrame:
    """Per declared stage (`stages.pipeline`): done / stale / missing / - (not run), whether
    ``run`` walks it, what it reads and the command that makes it."""
    # torch: the pipeline declaration imports every stage
    from datamodels.stages.states import stage_states as states

    run = as_run(run)
    if config is None:
        config, run, _ = config_and_run(run, None, imports_code=False)  # reads only
    return states(config, run)
