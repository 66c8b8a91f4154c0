"""``run``: every default stage of the declared pipeline (`stages.pipeline`), in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from rich.console import Console

from datamodels.api.analysis import estimate_many, evaluate, fit, removal
from datamodels.api.training import train
from datamodels.config import Config
from datamodels.store import Run


def _removal(config, out, address, executor, show_progress, console) -> Any:
    if config.plans_of_kind("removal"):  # its sets need the scores
        return removal(config, out, address, executor, show_progress, console)
    return None


# How ``run`` runs each default stage of the pipeline (prepare runs inside train; the removal
# sets, their training and the reduction inside removal).
RUNNERS: dict[str, Callable[..., Any] | None] = {
    "prepare": None,
    "train": lambda c, o, a, e, p, s: train(c, o, a, e, p, s),
    "fit": lambda c, o, a, e, p, s: fit(c, o, p, s),
    "estimate": lambda c, o, a, e, p, s: estimate_many(c, o, None, a, p, s, executor=e),
    "removal_sets": None,
    "removal": _removal,
    "evaluate": lambda c, o, a, e, p, s: evaluate(c, o, s),
}


def run(
    config: Config,
    out: str | Run,
    address: str | None = None,
    show_progress: bool = True,
    console: Console | None = None,
    executor: Any = None,
) -> pd.DataFrame:
    """Every default stage of the pipeline: prepare, train, fit, every estimator the run has
    models for, removal (when the config has a removal plan: its sets need the scores),
    evaluate. Returns the evaluation table."""
    # torch: the pipeline declaration imports every stage
    from datamodels.stages.pipeline import default_stages

    result = None
    for name in default_stages():
        runner = RUNNERS[name]
        if runner is not None:
            result = runner(config, out, address, executor, show_progress, console)
    return result
