"""The Python API: the same verbs as the command line, on a config and a run directory.

    import datamodels as dm
    config = dm.load_config("configs/digits.yaml", ["plans.train.count=500"])
    dm.run(config, "runs/digits")            # prepare, train, fit, estimate, evaluate
    dm.Run("runs/digits").scores("datamodels")

Each verb runs one stage through `stages.base.run_stage`: it does nothing when its outputs
are current, and finishes what an interrupted call left. Training and the gradient
estimators run as Ray tasks (``address``: a cluster, default RAY_ADDRESS or a local one);
pass ``executor=SerialExecutor()`` to run them in this process instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from rich.console import Console

from datamodels.config import Config
from datamodels.store import Run


def _run(config: Config, run: str | Run) -> Run:
    """The run directory, checked to be made from ``config`` (same hash)."""
    from datamodels.stages.prepare import check_run

    run = run if isinstance(run, Run) else Run(run)
    check_run(config, run)
    return run


def _config_and_run(first: Config | str | Run, second: Any) -> tuple[Config, Run, bool]:
    """``(config, run, …)`` or ``(run, …)``: a verb on an existing run may leave the config
    out (the run's ``config.yaml`` is used). Returns (config, run, whether ``second`` was
    the run)."""
    from datamodels.stages.prepare import load_run_config

    if isinstance(first, Config):
        return first, _run(first, second), True
    run = first if isinstance(first, Run) else Run(str(first))
    return load_run_config(run), run, False


def _ray(executor: Any, address: str | None) -> Any:
    from datamodels.orchestrate.executor import RayExecutor

    return executor or RayExecutor(address)


def _locked(
    run: Run,
    stage,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> Any:
    """Run one stage while holding the run's writer lock."""
    from datamodels.stages.base import run_stage
    from datamodels.store.lock import writer

    with writer(run.fs):
        return run_stage(stage, executor, show_progress, console)


def prepare(
    config: Config, out: str | Run, show_progress: bool = False, console: Console | None = None
) -> bool:
    """Write the beton and ``examples.parquet`` (False when they exist); a new run's
    ``config.yaml`` is written only once they are."""
    from datamodels.stages.prepare import PrepareStage, open_run, record_config
    from datamodels.store.lock import writer

    run = out if isinstance(out, Run) else Run(out)
    with writer(run.fs):
        wrote = _locked(
            open_run(config, run), PrepareStage(config, run), None, show_progress, console
        )
        record_config(config, run)
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
    import os
    import sys

    from datamodels.orchestrate.context import check_device
    from datamodels.stages.status import clear_failures
    from datamodels.stages.train import TrainStage
    from datamodels.store.lock import writer

    if shard is not None:
        if retry_failed:
            from datamodels.errors import ConfigError

            raise ConfigError(
                "--retry-failed clears failures.parquet for the whole run: run it once "
                "without --shard, then start the shard workers"
            )
        return train_shard(config, out, shard, show_progress, console)

    ray = sys.modules.get("ray")
    joined = "ray" if ray is not None and ray.is_initialized() else None  # a notebook's cluster
    cluster = (
        address
        or getattr(executor, "address", None)
        or joined
        or (None if executor is not None else os.environ.get("RAY_ADDRESS"))
    )
    if cluster == "local":  # RAY_ADDRESS=local: a fresh Ray on this machine
        cluster = None
    check_device(config.resources.device, config.resources.num_gpus, cluster)
    run = out if isinstance(out, Run) else Run(out)
    with writer(run.fs):
        prepare(config, run, console=console)
        if retry_failed:
            clear_failures(run)
        return _locked(
            run, TrainStage(config, run), _ray(executor, address), show_progress, console
        )


def parse_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    """``"I/N"`` or ``(I, N)`` -> ``(I, N)`` with ``0 <= I < N`` (0-based, as SLURM's
    ``--array=0-{N-1}``); anything else is a one-line `ConfigError`."""
    from datamodels.errors import ConfigError

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
    from datamodels.orchestrate.context import check_device
    from datamodels.orchestrate.executor import SerialExecutor
    from datamodels.stages.base import run_stage
    from datamodels.stages.prepare import check_run
    from datamodels.stages.train import TrainStage
    from datamodels.store.compact import COMPACTING_DIR
    from datamodels.store.lock import writer

    shard = parse_shard(shard)
    check_device(config.resources.device, config.resources.num_gpus, None)
    run = out if isinstance(out, Run) else Run(out)
    if not run.has_config():  # written last by prepare
        with writer(run.fs, wait_s=PREPARE_WAIT_S):
            prepare(config, run, console=console)
    with writer(run.fs, shared=True, wait_s=PREPARE_WAIT_S):
        check_run(config, run)
        if run.fs.entries(COMPACTING_DIR):  # its stashed models would be trained twice
            from datamodels.errors import StoreError

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
    from datamodels.store.compact import DEFAULT_TARGET_BYTES, compact_models
    from datamodels.store.lock import writer

    run = run if isinstance(run, Run) else Run(run)
    with writer(run.fs):
        return compact_models(run, target_rows=target_rows, target_bytes=DEFAULT_TARGET_BYTES)


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
    from datamodels.stages.fit import FitStage

    config, run, _ = _config_and_run(config, run)
    fitted = _locked(run, FitStage(config, run), None, show_progress, console)
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
    from datamodels.errors import EstimateError
    from datamodels.stages.estimate import EstimateStage
    from datamodels.stages.gradients import GRADIENT_METHODS, GradientStage

    config, run_, second_is_run = _config_and_run(config, run)
    if not second_is_run:  # estimate(run, method[, address ...])
        method, address = run, method if method is not None else address
    run = run_
    if not isinstance(method, str):
        raise EstimateError(f"estimate: name a method; choose from: {', '.join(methods())}")
    if method in GRADIENT_METHODS:
        stage, executor = GradientStage(config, run, method), _ray(executor, address)
    else:
        stage = EstimateStage(config, run, method)
    return _locked(run, stage, executor, show_progress, console)


def evaluate(
    config: Config | str | Run, run: str | Run | None = None, console: Console | None = None
) -> pd.DataFrame:
    """``evaluation.parquet`` as a frame (computed when the scores changed).
    ``evaluate(config, run)`` or ``evaluate(run)``."""
    from datamodels.stages.evaluate import EvaluateStage

    config, run, _ = _config_and_run(config, run)
    return _locked(run, EvaluateStage(config, run), None, False, console)


def removal(
    config: Config | str | Run,
    run: str | Run | None = None,
    address: str | None = None,
    executor: Any = None,
    show_progress: bool = True,
    console: Console | None = None,
) -> pd.DataFrame:
    """Counterfactual removal and brittleness by retraining (`stages.removal`): write the
    removal plan's sets from the score tables (once), train them through ``train``, reduce
    them to ``removals/results.parquet`` (returned). ``removal(config, run)`` or
    ``removal(run)``."""
    from datamodels.stages.removal import RemovalStage, write_removal_sets
    from datamodels.store.lock import writer

    config, run, _ = _config_and_run(config, run)
    with writer(run.fs):
        write_removal_sets(config, run)
        train(config, run, address, executor, show_progress, console)
        return _locked(run, RemovalStage(config, run), None, show_progress, console)


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
    from datamodels.stages.attack import AttackStage

    run = _run(config, run)
    return _locked(
        run, AttackStage(config, run, target, budget, point, max_iter), None, False, console
    )


def sparse_layer(
    config: Config | str | Run, run: str | Run | None = None, console: Console | None = None
) -> dict:
    """Fit the sparse decision layer of a checkpointed model (``sparse_layer/``); returns its
    summary row (the chosen λ, sparse and dense accuracies). ``sparse_layer(config, run)`` or
    ``sparse_layer(run)``."""
    from datamodels.stages.sparse_layer import SparseLayerStage

    config, run, _ = _config_and_run(config, run)
    return _locked(run, SparseLayerStage(config, run), None, False, console)
def alpha_effect(
    run: str | Run,
    k: int = 10,
    holdout: float = 0.2,
    models_per_level: int | None = None,
) -> pd.DataFrame:
    """The effect of subset size α (`datamodels.applications.alpha_effect`): datamodels per
    α level of the run, written to ``applications/alpha_effect.parquet``; returns the table."""
    from datamodels.applications.alpha_effect import alpha_effect_from_run
    from datamodels.errors import FitError
    from datamodels.store.lock import writer
    from datamodels.store.schemas import ALPHA_EFFECT_PATH, ALPHA_EFFECT_SCHEMA

    run = run if isinstance(run, Run) else Run(str(run))
    with writer(run.fs):
        frame = alpha_effect_from_run(run, k=k, holdout=holdout, models_per_level=models_per_level)
        if frame is None:
            raise FitError(
                f"alpha-effect: {run.uri} has no models at two or more subset sizes; add an "
                "alpha_grid plan (kind: alpha_grid, levels: 4, count: 200) or alpha plans at "
                "several alpha, and train them"
            )
        run.write_table(ALPHA_EFFECT_PATH, frame, ALPHA_EFFECT_SCHEMA)
    return frame


def lds_curve(run: str | Run, counts: tuple[int, ...] | None = None) -> pd.DataFrame:
    """LDS against the number of models (`datamodels.applications.alpha_effect.lds_curve`),
    written to ``applications/lds_curve.parquet``; returns the table."""
    from datamodels.applications.alpha_effect import DEFAULT_COUNTS, lds_curve_from_run
    from datamodels.errors import EvaluateError
    from datamodels.store.lock import writer
    from datamodels.store.schemas import LDS_CURVE_PATH, LDS_CURVE_SCHEMA

    run = run if isinstance(run, Run) else Run(str(run))
    with writer(run.fs):
        frame = lds_curve_from_run(run, tuple(counts or DEFAULT_COUNTS))
        if frame is None:
            raise EvaluateError(
                f"lds-curve: {run.uri} needs trained models in its fitting plan (fit.plan) "
                "and at least 3 in its evaluation plan (evaluate.plan); train them first"
            )
        run.write_table(LDS_CURVE_PATH, frame, LDS_CURVE_SCHEMA)
    return frame


# Run only when named (``estimate -m``): each costs hundreds of training runs per target
# block (README "Metagradients and the single-model LDS").
ON_REQUEST = ("metagradient", "hydra")


def methods() -> tuple[str, ...]:
    """Every estimator name ``estimate`` accepts."""
    from datamodels.stages.estimate import METHODS
    from datamodels.stages.gradients import GRADIENT_METHODS

    return METHODS + GRADIENT_METHODS


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
    checkpoints the run has except those ``ON_REQUEST`` (the others are skipped with a line
    on ``console``).
    ``report(name, written, seconds)`` is called after each. Returns name -> rows written."""
    import time

    from datamodels.errors import EstimateError

    unknown = [n for n in names or () if n not in methods()]
    if unknown:
        raise EstimateError(f"unknown method {unknown[0]!r}; choose from: {', '.join(methods())}")
    from datamodels.orchestrate.progress import log_console

    console = console or log_console()
    results = {}
    for name in names or [m for m in methods() if m not in ON_REQUEST]:
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


def run(
    config: Config,
    out: str | Run,
    address: str | None = None,
    show_progress: bool = True,
    console: Console | None = None,
    executor: Any = None,
) -> pd.DataFrame:
    """Every stage: prepare, train, fit, every estimator the run has models for, removal (when
    the config has a removal plan: its sets need the scores), evaluate."""
    from datamodels.stages.removal import removal_plan

    train(config, out, address, executor, show_progress, console)
    fit(config, out, show_progress, console)
    estimate_many(config, out, None, address, show_progress, console, executor=executor)
    if removal_plan(config) is not None:
        removal(config, out, address, executor, show_progress, console)
    return evaluate(config, out, console)
