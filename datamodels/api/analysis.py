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


# The exact Hessian's time, measured on a 2-core CPU (load ~7; tests/api/test_methods.py
# restates them): P HVPs over the model's n training points cost about c·P²·n seconds,
# c = 3e-9 for the flat float64 forms (mlp P=4,810, n=719: 35 s; P=9,610: 250 s) and 2e-7
# for an nn.Module (a conv net, P=9,478, n=2,000: ~31,000 s extrapolated), plus the LU
# factorisation, about 7e-11·P³ (P=9,610: 56 s).
HESSIAN_SECONDS_PER_P2N = {"logreg": 3e-9, "mlp": 3e-9, "module": 2e-7}
LU_SECONDS_PER_P3 = 7e-11
EXACT_HESSIAN_BUDGET_S = 300.0  # above this, the default leaves exact influence out


def exact_hessian_seconds(form: str, num_params: int, n_points: int, models: int = 1) -> float:
    """Expected seconds of ``models`` exact Hessians (formed and LU-factored) of a
    ``num_params``-parameter model of functional form ``form`` over ``n_points`` examples."""
    p = float(num_params)
    per_model = HESSIAN_SECONDS_PER_P2N.get(form, HESSIAN_SECONDS_PER_P2N["module"]) * p * p
    return models * (per_model * n_points + LU_SECONDS_PER_P3 * p**3)


def _numel(obj: Any) -> int:
    if hasattr(obj, "numel"):
        return int(obj.numel())
    if isinstance(obj, dict):
        return sum(_numel(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_numel(v) for v in obj)
    return 0


def too_costly(config: Config, run: Run, name: str) -> str | None:
    """Why the default leaves method ``name`` out (one line), or None: exact influence
    whose Hessians are expected to take more than ``EXACT_HESSIAN_BUDGET_S``."""
    from datamodels.gradients.checkpointed import functional_form  # torch: gradients
    from datamodels.methods import METHODS  # torch: the method modules
    from datamodels.stages.estimate import EstimateStage  # torch: the estimators
    from datamodels.store.checkpoints import load_checkpoint  # torch: torch.load

    if not (METHODS[name].hessian and config.gradients.solver == "exact"):
        return None
    try:
        stage = EstimateStage(config, run, name)
    except EstimateError:
        return None  # the method's own skip line says why
    if not stage.model_ids:
        return None
    last = stage.checkpoints[stage.model_ids[0]][-1]
    if not isinstance(last[-1], str):
        return None
    params = _numel(load_checkpoint(run.fs, last[-1])["layers"])
    plan = next((p for p in config.plans if p.name == config.checkpoints.plan), None)
    n = int(round(run.n_train * float(getattr(plan, "alpha", 1.0) or 1.0)))
    seconds = exact_hessian_seconds(functional_form(config), params, n, len(stage.model_ids))
    if seconds <= EXACT_HESSIAN_BUDGET_S:
        return None
    return (
        f"{len(stage.model_ids)} exact Hessian(s) of {params:,} parameters over {n:,} points "
        f"would take ~{seconds / 60:,.0f} min; name it with --methods (or estimate.methods), or "
        "--set gradients.solver=cg"
    )


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
    """Named estimators (``names``, else ``estimate.methods``; their errors are the
    caller's), or every one whose models or checkpoints the run has except those
    `on_request` names and those `too_costly` (each skipped with a line on ``console``).
    ``report(name, written, seconds)`` is called after each. Returns name -> rows written."""
    names = list(names or config.estimate.methods or []) or None
    unknown = [n for n in names or () if n not in methods()]
    if unknown:
        raise EstimateError(
            f"unknown method {unknown[0]!r} (--methods / estimate.methods); choose from: "
            f"{', '.join(methods())}"
        )
    console = console or log_console()
    run = checked_run(config, run) if isinstance(run, str) else run
    results = {}
    for name in names or [m for m in methods() if m not in on_request()]:
        why = None if names else too_costly(config, run, name)
        if why:
            console.print(f"estimate: skipped {name}: {why}", highlight=False)
            continue
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
