"""The verbs that read models: fit, estimate (one or many), removal, evaluate, attack,
sparse_layer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from rich.console import Console

from datamodels.api._common import checked_run, config_and_run, locked, ray_executor
from datamodels.api.training import train
from datamodels.config import Config
from datamodels.errors import EstimateError
from datamodels.orchestrate.progress import log_console
from datamodels.stages.evaluate import EvaluateStage
from datamodels.store import Run
from datamodels.store.lock import writer


@dataclass
class FitResult:
    """What ``fit`` did: ``fitted`` (False when the datamodels were current; also the truth
    value) and ``targets``, the per-target table (λ, non-zeros, validation fit)."""

    fitted: bool
    targets: pd.DataFrame

    def __bool__(self) -> bool:
        return self.fitted


def fit(
    config: Config | str | Run, run: str | Run | None = None, show_progress: bool = True,
    console: Console | None = None,
) -> FitResult:
    """Fit the datamodels (nothing when they are current for these settings).
    ``fit(config, run)`` or ``fit(run)``."""
    # torch: the fit stage's regression runs on it
    from datamodels.stages.fit import FitStage

    config, run, _ = config_and_run(config, run)
    fitted = locked(run, FitStage(config, run), None, show_progress, console)
    return FitResult(bool(fitted), run.targets())


def estimate(
    config: Config | str | Run,
    run: str | Run | None = None,
    method: str | None = None,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> dict[str, int]:
    """One estimator's ``scores/<method>.parquet`` (+ self scores); returns the rows written
    (empty when they were current). ``estimate(config, run, method)`` or
    ``estimate(run, method)``; read the scores with ``Run(run).scores(method)``."""
    from datamodels.stages.estimate import EstimateStage  # torch: the estimators

    config, run_, second_is_run = config_and_run(config, run)
    if not second_is_run:  # estimate(run, method[, address ...])
        method, address = run, method if method is not None else address
    run = run_
    if not isinstance(method, str):
        raise EstimateError(f"estimate: name a method; choose from: {', '.join(methods())}")
    stage = EstimateStage(config, run, method)
    if stage.per_model:  # gradient methods: one Ray task per (model, block)
        executor = ray_executor(executor, address)
    return locked(run, stage, executor, show_progress, console)


def evaluate(
    config: Config | str | Run, run: str | Run | None = None, console: Console | None = None
) -> pd.DataFrame:
    """``evaluation.parquet`` as a frame (computed when the scores changed).
    ``evaluate(config, run)`` or ``evaluate(run)``."""
    config, run, _ = config_and_run(config, run)
    return locked(run, EvaluateStage(config, run), None, False, console)


def removal(
    config: Config | str | Run,
    run: str | Run | None = None,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> pd.DataFrame:
    """Counterfactual removal and brittleness by retraining (`stages.removal`): the stage
    ``removal_sets`` writes the removal plan's sets from the score tables (once), ``train``
    trains them, the stage ``removal`` reduces them to ``removals/results.parquet``
    (returned). ``removal(config, run)`` or ``removal(run)``."""
    # torch: the removal sets are chosen by the applications' score readers
    from datamodels.stages.removal import RemovalSetsStage, RemovalStage

    config, run, _ = config_and_run(config, run)
    with writer(run.fs):
        locked(run, RemovalSetsStage(config, run), None, False, console)
        train(config, run, address, executor, show_progress, console)
        return locked(run, RemovalStage(config, run), None, show_progress, console)


def attack(
    config: Config,
    run: str | Run,
    target: int,
    budget: float,
    point: int | None = None,
    max_iter: int = 20,
    console: Console | None = None,
) -> dict:
    """A training-set attack on eval position ``target``; returns its ``attacks/`` row."""
    # torch: the attack differentiates through training
    from datamodels.stages.attack import AttackStage

    run = checked_run(config, run)
    return locked(
        run, AttackStage(config, run, target, budget, point, max_iter), None, False, console
    )


def sparse_layer(
    config: Config | str | Run, run: str | Run | None = None, console: Console | None = None
) -> dict:
    """Fit the sparse decision layer of a checkpointed model (``sparse_layer/``); returns its
    summary row (the chosen λ, sparse and dense accuracies). ``sparse_layer(config, run)`` or
    ``sparse_layer(run)``."""
    # torch: the layer's features come from a checkpointed network
    from datamodels.stages.sparse_layer import SparseLayerStage

    config, run, _ = config_and_run(config, run)
    return locked(run, SparseLayerStage(config, run), None, False, console)


def methods() -> tuple[str, ...]:
    """Every estimator name ``estimate`` accepts (the method registry's, in its order)."""
    from datamodels.methods import METHODS  # torch: the method modules

    return tuple(METHODS)


def on_request() -> tuple[str, ...]:
    """The methods run only when named (``estimate -m``): each costs hundreds of training runs
    per target block (docs/applications/metagradients.md)."""
    from datamodels.methods import METHODS  # torch: the method modules

    return tuple(name for name, cls in METHODS.items() if cls.on_request)


def estimate_many(
    config: Config,
    run: str | Run,
    names: list[str] | None = None,
    address: str | None = None,
    show_progress: bool = True,
    console: Console | None = None,
    report: Any = None,
    executor: Any = None,
) -> dict:
    """Named estimators (their errors are the caller's), or every one whose models or
    checkpoints the run has except those `on_request` names (the others are skipped with a line
    on ``console``).
    ``report(name, written, seconds)`` is called after each. Returns name -> rows written."""
    unknown = [n for n in names or () if n not in methods()]
    if unknown:
        raise EstimateError(f"unknown method {unknown[0]!r}; choose from: {', '.join(methods())}")
    console = console or log_console()
    results = {}
    for name in names or [m for m in methods() if m not in on_request()]:
        start = time.perf_counter()
        try:
            results[name] = estimate(config, run, name, address, executor, show_progress, console)
        except EstimateError as err:
            if names:
                raise
            console.print(f"estimate: skipped {name}: {err}", highlight=False)
            continue
        if report:
            report(name, results[name], time.perf_counter() - start)
    return results
