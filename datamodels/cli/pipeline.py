"""The pipeline's commands: ``prepare``, ``train``, ``fit``, ``evaluate``, ``estimate``,
``removal`` and ``run`` (every stage in turn)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from datamodels import api
from datamodels.cli.common import (
    AddressOpt,
    ConfigArg,
    OutOpt,
    QuietOpt,
    RetryOpt,
    RunArg,
    SetOpt,
    TrustOpt,
    default_out,
    err_console,
    load,
    out_console,
    run_config,
    user_errors,
)
from datamodels.cli.inspection import status
from datamodels.config import Config, load_config
from datamodels.stages.status import plan_status
from datamodels.store import Run
from datamodels.store.beton import data_path


def _nothing_left_if_refused(target: str):
    """A refused config (or data that does not load) leaves no new run directory behind."""
    # torch: the prepare stage's module imports the data and training code
    from datamodels.stages.prepare import nothing_left_if_refused

    return nothing_left_if_refused(target)


@user_errors
def prepare(
    config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, trust_code: TrustOpt = False
) -> None:
    """Write the examples file (FFCV beton, or the array store without FFCV) and
    examples.parquet into the run directory."""
    cfg = load(config, set_, trust_code)
    target = default_out(cfg, out)
    with _nothing_left_if_refused(target):
        wrote = api.prepare(cfg, target, console=err_console)
    err_console.print(
        f"prepare: {'wrote' if wrote else 'already present:'} {target}/examples.parquet, "
        f"{data_path(Run(target))}"
    )


def _train(
    cfg: Config,
    out: str,
    address: str | None,
    quiet: bool,
    retry_failed: bool = False,
    shard: str | None = None,
) -> int:
    """Train; returns the number of models that failed for good (reported in one line)."""
    summary = api.train(
        cfg,
        out,
        address=address,
        show_progress=not quiet,
        console=err_console,
        retry_failed=retry_failed,
        shard=shard,
    )
    for shard in summary.quarantined:
        err_console.print(
            f"moved bad shard {shard} to models/_invalid/; its models were retrained",
            style="yellow",
            markup=False,
            highlight=False,
        )
    failed = int(plan_status(cfg, Run(out))["failed"].sum())
    if failed:
        err_console.print(
            f"train: {failed} models failed for good (every attempt spent); see "
            f'{out}/failures.parquet (datamodels query {out} "SELECT * FROM failures"); '
            f"fix the cause, then `datamodels train ... --retry-failed`",
            style="yellow",
            markup=False,
            highlight=False,
        )
    return failed


@user_errors
def train(
    config: ConfigArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    retry_failed: RetryOpt = False,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="I/N (0-based): train only the missing models with model_id % N == I, in "
            "this process without Ray; N such workers (array jobs) may run at once",
        ),
    ] = None,
    trust_code: TrustOpt = False,
) -> None:
    """Train every planned model that is missing from the run (resumes by default); exits 1
    when models failed for good."""
    cfg = load(config, set_, trust_code)
    target = default_out(cfg, out)
    with _nothing_left_if_refused(target):
        failed = _train(cfg, target, address, quiet, retry_failed, shard)
    if failed:
        raise typer.Exit(1)


def _fit(cfg: Config, run: str, quiet: bool) -> None:
    if api.fit(cfg, run, show_progress=not quiet, console=err_console):
        err_console.print(
            f"fit: wrote {run}/datamodels/weights.parquet, targets.parquet, "
            "scores/datamodels.parquet"
        )


def _evaluate(cfg: Config, run: str) -> None:
    frame = api.evaluate(cfg, run, console=err_console)
    table = Table(title=f"evaluation ({run}/evaluation.parquet)")
    for column in ("method", "metric", "value", "n_targets"):
        table.add_column(column, justify="left" if column in ("method", "metric") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(row.method, row.metric, f"{row.value:.4f}", str(row.n_targets))
    out_console.print(table)


@user_errors
def fit(
    run: RunArg, set_: SetOpt = None, quiet: QuietOpt = False, trust_code: TrustOpt = False
) -> None:
    """Fit one LASSO datamodel per evaluation target (λ chosen on held-out models)."""
    _fit(run_config(run, set_, trust_code), run, quiet)


@user_errors
def evaluate(run: RunArg, set_: SetOpt = None, trust_code: TrustOpt = False) -> None:
    """Score every scores/*.parquet (LDS on the held-out eval plan) into evaluation.parquet."""
    _evaluate(run_config(run, set_, trust_code), run)


def _estimate(
    cfg: Config,
    run: str,
    names: list[str] | None = None,
    address: str | None = None,
    quiet: bool = False,
) -> None:
    def report(name: str, written: dict, seconds: float) -> None:
        if not written:
            return  # the stage said it was up to date
        parts = ", ".join(
            f"{k}: {v}" + ("" if k == "models" else " rows") for k, v in written.items()
        )
        err_console.print(
            f"estimate: {name} in {seconds:.1f}s ({parts})", highlight=False
        )

    api.estimate_many(
        cfg, run, names, address, show_progress=not quiet, console=err_console, report=report
    )


MethodOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--method",
        "-m",
        help=(
            "estimator name, repeatable (default: every one the run has models or checkpoints for)"
        ),
    ),
]


@user_errors
def estimate(
    run: RunArg,
    method: MethodOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    trust_code: TrustOpt = False,
) -> None:
    """Compute estimators into scores/<method>.parquet (+ self_scores/): retraining-based ones
    from models/, gradient ones (influence, influence_pert, tracin, representer, trak) as Ray
    tasks over checkpoints/."""
    _estimate(
        run_config(run, set_, trust_code), run, [m for m in method or [] if m != "all"] or None,
        address, quiet,
    )


def _removal(cfg: Config, run: str, address: str | None, quiet: bool) -> None:
    results = api.removal(cfg, run, address, show_progress=not quiet, console=err_console)
    grid = results[results["kind"] == "grid"]
    err_console.print(
        f"removal: {len(results)} sets ({grid['target'].nunique()} targets) in "
        f"{run}/removals/results.parquet",
        highlight=False,
    )


@user_errors
def removal(run: RunArg, set_: SetOpt = None, address: AddressOpt = None,
            quiet: QuietOpt = False, trust_code: TrustOpt = False) -> None:
    """Counterfactual removal and brittleness by retraining: choose the removal plan's sets
    from the score tables (once: plan_masks/, removals/sets.parquet), train them, write
    removals/results.parquet (predicted vs actual margin change, flips)."""
    _removal(run_config(run, set_, trust_code), run, address, quiet)


MethodsOpt = Annotated[
    str | None,
    typer.Option(
        "--methods",
        help="estimators to compute, comma-separated (default: estimate.methods, else every "
        "one the run has models or checkpoints for, less those too costly for the model)",
    ),
]


@user_errors
def run_all(
    config: ConfigArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    retry_failed: RetryOpt = False,
    methods: MethodsOpt = None,
    trust_code: TrustOpt = False,
) -> None:
    """Run every stage: prepare, train, fit, estimate, removal (with a removal plan), evaluate
    (each skips work already done); exits 1 when models failed for good (the later stages
    still run on the others)."""
    # torch: the declared pipeline imports every stage
    from datamodels.stages.pipeline import default_stages
    from datamodels.stages.preflight import check_config  # torch: the estimator registry

    cfg = load(config, set_, trust_code)
    target = default_out(cfg, out)
    chosen = [m.strip() for m in (methods or "").split(",") if m.strip()] or None
    if chosen:  # checked as estimate.methods would be, before anything trains
        check_config(load_config(cfg, [f"estimate.methods=[{','.join(chosen)}]"]))
    failed = []

    def train_and_show() -> None:
        with _nothing_left_if_refused(target):
            failed.append(_train(cfg, target, address, quiet, retry_failed))
        status(target)

    def removal_if_planned() -> None:
        if cfg.plans_of_kind("removal"):  # its sets need the scores
            _removal(cfg, target, address, quiet)

    # how `run` runs each default stage (prepare runs inside train; the removal sets, their
    # training and the reduction inside removal)
    runners = {
        "train": train_and_show,
        "fit": lambda: _fit(cfg, target, quiet),
        "estimate": lambda: _estimate(cfg, target, chosen, address=address, quiet=quiet),
        "removal": removal_if_planned,
        "evaluate": lambda: _evaluate(cfg, target),
    }
    for name in default_stages():  # the declared pipeline's order
        if name in runners:
            runners[name]()
    if any(failed):
        raise typer.Exit(1)
