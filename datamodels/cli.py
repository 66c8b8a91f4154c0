"""The ``datamodels`` command line: one sub-command per stage, plus status / verify / query.

User mistakes (``DatamodelsError``) are printed as one line on stderr with exit code 2;
nothing in the run directory is deleted on any error path.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from datamodels.config import Config, load_config
from datamodels.errors import DatamodelsError
from datamodels.orchestrate.progress import log_console

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Training-data attribution by mass retraining."
)
# One line per message, never folded at 80 columns in job logs or files (see log_console).
err_console = log_console()
out_console = log_console(stderr=False)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see configs/)", show_default=False)]
RunArg = Annotated[str, typer.Argument(help="run directory (local path or pyarrow filesystem URI)")]
OutOpt = Annotated[
    str | None, typer.Option("--out", "-o", help="run directory; default runs/<config name>")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a config field, e.g. --set train.epochs=5"),
]
AddressOpt = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
RetryOpt = Annotated[
    bool,
    typer.Option(
        "--retry-failed",
        help="give models whose attempts are spent a fresh budget "
        "(failures.parquet is moved to _failures/)",
    ),
]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DatamodelsError as err:  # printed literally: a message may hold [brackets]
            err_console.print(Text.assemble(("error: ", "red"), str(err)), soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _load(config: Path, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


def _out(config: Config, out: str | None) -> str:
    return out or f"runs/{config.name}"


@app.command()
@user_errors
def prepare(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None) -> None:
    """Write the FFCV beton and examples.parquet into the run directory."""
    from datamodels import api

    cfg = _load(config, set_)
    target = _out(cfg, out)
    wrote = api.prepare(cfg, target, console=err_console)
    err_console.print(
        f"prepare: {'wrote' if wrote else 'already present:'} {target}/examples.parquet, "
        "data/examples.beton"
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
    from datamodels import api
    from datamodels.stages.status import plan_status
    from datamodels.store import Run

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


@app.command()
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
) -> None:
    """Train every planned model that is missing from the run (resumes by default); exits 1
    when models failed for good."""
    cfg = _load(config, set_)
    if _train(cfg, _out(cfg, out), address, quiet, retry_failed, shard):
        raise typer.Exit(1)


def _existing_run(run: str):
    """``Run(run)``, refused in one line when the path holds no run."""
    from datamodels.errors import StoreError
    from datamodels.store import Run

    handle = Run(run)
    if not handle.has_config():
        raise StoreError(
            f"{run} is not a run directory (no config.yaml); create one with "
            "`datamodels run CONFIG --out DIR`"
        )
    return handle


def _run_config(run: str, overrides: list[str] | None) -> Config:
    """The run's own config with stage settings overridden (training settings may not change)."""
    from datamodels.config import config_from_dict
    from datamodels.errors import RunMismatchError
    from datamodels.stages.prepare import load_run_config

    saved = load_run_config(_existing_run(run))
    cfg = config_from_dict(saved.model_dump(mode="json"), overrides or [])
    if cfg.hash != saved.hash:
        raise RunMismatchError(
            "--set may change only resources, fit, estimate, gradients and evaluate settings "
            "of an existing "
            f"run ({run}); train a new run for other data, model, recipe or plans"
        )
    return cfg


def _fit(cfg: Config, run: str, quiet: bool) -> None:
    from datamodels import api

    if api.fit(cfg, run, show_progress=not quiet, console=err_console):
        err_console.print(
            f"fit: wrote {run}/datamodels/weights.parquet, targets.parquet, "
            "scores/datamodels.parquet"
        )


def _evaluate(cfg: Config, run: str) -> None:
    from datamodels import api

    frame = api.evaluate(cfg, run, console=err_console)
    table = Table(title=f"evaluation ({run}/evaluation.parquet)")
    for column in ("method", "metric", "value", "n_targets"):
        table.add_column(column, justify="left" if column in ("method", "metric") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(row.method, row.metric, f"{row.value:.4f}", str(row.n_targets))
    out_console.print(table)


@app.command()
@user_errors
def fit(run: RunArg, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Fit one LASSO datamodel per evaluation target (λ chosen on held-out models)."""
    _fit(_run_config(run, set_), run, quiet)


@app.command()
@user_errors
def evaluate(run: RunArg, set_: SetOpt = None) -> None:
    """Score every scores/*.parquet (LDS on the held-out eval plan) into evaluation.parquet."""
    _evaluate(_run_config(run, set_), run)


def _estimate(
    cfg: Config,
    run: str,
    names: list[str] | None = None,
    address: str | None = None,
    quiet: bool = False,
) -> None:
    from datamodels import api

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


@app.command()
@user_errors
def estimate(
    run: RunArg,
    method: MethodOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compute estimators into scores/<method>.parquet (+ self_scores/): retraining-based ones
    from models/, gradient ones (influence, influence_pert, tracin, representer, trak) as Ray
    tasks over checkpoints/."""
    _estimate(
        _run_config(run, set_), run, [m for m in method or [] if m != "all"] or None, address, quiet
    )


@app.command()
@user_errors
def attack(
    run: RunArg,
    target: Annotated[
        int, typer.Option("--target", "-t", help="eval position of the target to misclassify")
    ],
    budget: Annotated[
        float,
        typer.Option(
            "--budget", "-b", help="L∞ radius of the perturbation (normalised input units)"
        ),
    ],
    point: Annotated[
        int | None,
        typer.Option("--point", help="train position to perturb (default: the most influential)"),
    ] = None,
    max_iter: Annotated[int, typer.Option("--max-iter", help="perturb-and-retrain rounds")] = 20,
    set_: SetOpt = None,
) -> None:
    """Training-set attack (Koh & Liang §5.2): perturb one training input so that the retrained
    model misclassifies the target; writes attacks/target_<target>.parquet."""
    from datamodels import api

    row = api.attack(
        _run_config(run, set_), run, target, budget, point, max_iter, console=err_console
    )
    trail = " -> ".join(f"{m:.3f}" for m in row["margins"])
    verdict = "flipped" if row["flipped"] else "not flipped"
    out_console.print(
        f"attack on target {target} (model {row['model_id']}): "
        f"perturbed train position {row['train_position']}, "
        f"|delta|_inf = {max(abs(v) for v in row['delta']):.4g} <= {budget:g}; "
        f"margin {trail}: {verdict}"
    )
    out_console.print(f"wrote {run}/attacks/target_{target}.parquet")


def _removal(cfg: Config, run: str, address: str | None, quiet: bool) -> None:
    from datamodels import api

    results = api.removal(cfg, run, address, show_progress=not quiet, console=err_console)
    grid = results[results["kind"] == "grid"]
    err_console.print(
        f"removal: {len(results)} sets ({grid['target'].nunique()} targets) in "
        f"{run}/removals/results.parquet",
        highlight=False,
    )


@app.command()
@user_errors
def removal(run: RunArg, set_: SetOpt = None, address: AddressOpt = None,
            quiet: QuietOpt = False) -> None:
    """Counterfactual removal and brittleness by retraining: choose the removal plan's sets
    from the score tables (once: plan_masks/, removals/sets.parquet), train them, write
    removals/results.parquet (predicted vs actual margin change, flips)."""
    _removal(_run_config(run, set_), run, address, quiet)


@app.command("run")
@user_errors
def run_all(
    config: ConfigArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
    retry_failed: RetryOpt = False,
) -> None:
    """Run every stage: prepare, train, fit, estimate, removal (with a removal plan), evaluate
    (each skips work already done); exits 1 when models failed for good (the later stages
    still run on the others)."""
    from datamodels.stages.removal import removal_plan

    cfg = _load(config, set_)
    target = _out(cfg, out)
    failed = _train(cfg, target, address, quiet, retry_failed)
    status(target)
    _fit(cfg, target, quiet)
    _estimate(cfg, target, address=address, quiet=quiet)
    if removal_plan(cfg) is not None:
        _removal(cfg, target, address, quiet)
    _evaluate(cfg, target)
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def status(run: RunArg) -> None:
    """Per plan: models planned, done, failed (attempts spent), waiting (a removal or stored
    plan before its masks are written) and missing."""
    from datamodels.stages.prepare import load_run_config
    from datamodels.stages.status import plan_status

    handle = _existing_run(run)
    frame = plan_status(load_run_config(handle), handle)
    table = Table(title=f"{run}")
    for column in frame.columns:
        table.add_column(column, justify="left" if column == "plan" else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out_console.print(table)
    duplicates = [p for p in handle.valid_shards()[1] if p.kind == "duplicate"]
    if duplicates:  # done counts each id once; say that some are stored more than once
        out_console.print(
            f"warning: {len(duplicates)} duplicate model id problem(s) in {run}/models "
            f"(first: {duplicates[0].message}); run `datamodels verify {run}`",
            style="yellow", markup=False, highlight=False)
    from datamodels.store.checkpoints import read_checkpoint_index

    index = read_checkpoint_index(handle.fs)
    if len(index):
        epochs = ", ".join(str(e) for e in sorted(index["epoch"].unique()))
        out_console.print(
            f"checkpoints: {index['model_id'].nunique()} models (epochs {epochs}), "
            f"{len(index)} files in {run}/checkpoints/"
        )


@app.command()
@user_errors
def compact(
    run: RunArg,
    rows: Annotated[
        int | None,
        typer.Option("--rows", help="models per merged shard (default: ~256 MiB shards)"),
    ] = None,
) -> None:
    """Merge the small shards of models/ into large ones (atomically: old shards are removed
    only after the merged one is written and read back; a crash loses nothing)."""
    from datamodels import api

    summary = api.compact(_existing_run(run), target_rows=rows, console=err_console)
    out_console.print(
        f"compact: {run}/models: {summary.shards_before} -> {summary.shards_after} shards "
        f"({summary.models} models, {summary.merged} merged files written)",
        highlight=False,
    )


@app.command("sparse-layer")
@user_errors
def sparse_layer(run: RunArg, set_: SetOpt = None) -> None:
    """Sparse decision layer (Wong et al. 2021): an elastic-net multinomial path on a
    checkpointed model's penultimate features, λ chosen on held-out training rows at
    sparse_layer.max_features per class; writes sparse_layer/*.parquet."""
    from datamodels import api

    row = api.sparse_layer(_run_config(run, set_), run, console=err_console)
    out_console.print(
        f"sparse layer of model {row['model_id']}: λ #{row['chosen_lam_index']} "
        f"({row['chosen_lam']:.4g}), at most {row['chosen_max_features_per_class']} of "
        f"{row['num_features']} features per class; test accuracy "
        f"{row['sparse_test_accuracy']:.4f} (dense layer {row['dense_test_accuracy']:.4f})",
        highlight=False,
    )
    out_console.print(f"wrote {run}/sparse_layer/", highlight=False)


@app.command()
@user_errors
def verify(run: RunArg) -> None:
    """Check every table and shard: torn files, wrong schema, duplicate ids, length mismatches,
    corrupt pages (checksums), shards of another config, masks that differ from the plan."""
    from datamodels.store import verify as verify_run

    problems = verify_run(_existing_run(run))
    if not problems:
        out_console.print(f"verify: {run}: OK")
        return
    for p in problems:
        out_console.print(f"{p.kind}: {p.file}: {p.message}", highlight=False, soft_wrap=True)
    out_console.print(f"verify: {len(problems)} problem(s)")
    raise typer.Exit(1)


@app.command()
@user_errors
def report(
    run: RunArg,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="HTML file; default <run>/report.html"),
    ] = None,
) -> None:
    """One self-contained HTML page: LDS, mislabel detection, what predictions rest on,
    embedding, leakage, brittleness, LOO agreement, LDS against number of models, effect of
    subset size α, run facts (plots inline)."""
    from datamodels.report import build_report

    path = build_report(_existing_run(run), out)
    out_console.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command("transfer-report")
@user_errors
def transfer_report(
    run: RunArg,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="HTML file; default <run>/transfer_report.html"),
    ] = None,
    source_class: Annotated[
        str | None,
        typer.Option("--source-class", help="source class (name or position) whose most "
                     "influenced target examples to show; default: the most harmful"),
    ] = None,
    counterfactual: Annotated[
        bool,
        typer.Option("--counterfactual/--no-counterfactual", help="remove the k most harmful "
                     "source classes (mask 1 of the config's stored plan of two masks) and "
                     "retrain through the driver"),
    ] = True,
    k: Annotated[int, typer.Option("--k", help="how many source classes to remove")] = 4,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """A transfer run's report: per target class the most helpful and harmful source classes,
    the target examples a source class moves most, and the counterfactual (target accuracy
    with all source classes vs without the most harmful ones)."""
    from datamodels.report.transfer import build_transfer_report
    from datamodels.report.transfer import counterfactual as run_counterfactual
    from datamodels.stages.prepare import load_run_config

    handle = _existing_run(run)
    config = load_run_config(handle)
    if config.transfer is None:
        raise DatamodelsError(
            f"{run} is not a transfer run (its config has no transfer section); see "
            "configs/transfer_digits.yaml, and `datamodels report` for this run"
        )
    result = None
    if counterfactual:
        result = run_counterfactual(
            config, handle, k, address=address, show_progress=not quiet, console=err_console
        )
        for row in result.removed.itertuples(index=False):
            out_console.print(
                f"removed source class {row.train_position} ({row.name}): total weight "
                f"{row.total_weight:+.3f}", highlight=False,
            )
        for row in result.summary.itertuples(index=False):
            out_console.print(
                f"{row.setting}: target accuracy {row[2]:.4f} ± {row.stderr:.4f} "
                f"({row.models} models)", highlight=False,
            )
        change, stderr = result.change
        predicted = result.predicted_margin_change(len(handle.labels("test")))
        out_console.print(
            f"accuracy change: {change:+.4f} ± {stderr:.4f}; mean margin change "
            f"{result.margin_change:+.3f} (datamodels predicted {predicted:+.3f})",
            highlight=False,
        )
        for row in result.by_correctness.itertuples(index=False):
            out_console.print(
                f"mean margin change on the {row.count} target examples {row[0]}: "
                f"{row[2]:+.3f}", highlight=False,
            )
    path = build_transfer_report(handle, out, source_class, result)
    out_console.print(f"transfer report: {path}", highlight=False, soft_wrap=True)


@app.command("alpha-effect")
@user_errors
def alpha_effect(
    run: RunArg,
    k: Annotated[int, typer.Option("--k", help="top-k helpful examples compared")] = 10,
    holdout: Annotated[
        float, typer.Option("--holdout", help="fraction of each level held out for its LDS")
    ] = 0.2,
    models_per_level: Annotated[
        int | None, typer.Option("--models-per-level", help="default: the smallest level's")
    ] = None,
) -> None:
    """Datamodels per subset size α (alpha_grid levels, alpha plans): LDS and top-k agreement
    with the run's datamodels -> applications/alpha_effect.parquet."""
    import pandas as pd

    from datamodels import api
    from datamodels.applications.alpha_effect import alpha_effect_summary

    frame = api.alpha_effect(_existing_run(run), k=k, holdout=holdout,
                             models_per_level=models_per_level)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(alpha_effect_summary(frame).to_string(index=False, float_format="{:.3f}".format))
    out_console.print(f"alpha-effect: {run}/applications/alpha_effect.parquet", highlight=False,
                      soft_wrap=True)


@app.command("lds-curve")
@user_errors
def lds_curve(
    run: RunArg,
    counts: Annotated[
        str, typer.Option("--counts", help="model counts, comma-separated (capped by the plan)")
    ] = "100,200,500,1000,2000",
) -> None:
    """LDS of datamodels fitted on the first m models of the fitting plan, for m on a grid
    (LDS on the evaluation plan) -> applications/lds_curve.parquet."""
    from datamodels import api
    from datamodels.errors import ConfigError

    try:
        grid = tuple(int(c) for c in counts.split(",") if c.strip())
    except ValueError:
        raise ConfigError(
            f"--counts: {counts!r} is not a comma-separated list of integers, e.g. 100,500"
        ) from None
    frame = api.lds_curve(_existing_run(run), grid)
    print(frame.to_string(index=False, float_format="{:.4f}".format))
    out_console.print(f"lds-curve: {run}/applications/lds_curve.parquet", highlight=False,
                      soft_wrap=True)


@app.command()
@user_errors
def query(
    run: RunArg, sql: Annotated[str, typer.Argument(help="a read-only SQL query (DuckDB)")]
) -> None:
    """Run read-only SQL over the run's tables (views: models, examples, failures, ...)."""
    import pandas as pd

    from datamodels.store import query as query_run

    frame = query_run(_existing_run(run), sql)
    with pd.option_context("display.max_rows", 200, "display.width", 200):
        print(frame.to_string(index=False))


# -- Ray Jobs -------------------------------------------------------------------------------

JobsAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray Jobs API (the head's dashboard), e.g. http://127.0.0.1:8265 "
        "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)",
    ),
]
JobIdArg = Annotated[str, typer.Argument(help="submission id (printed by `datamodels submit`)")]
jobs_app = typer.Typer(
    no_args_is_help=True, help="Ray Jobs on a cluster: list, status, logs, stop."
)
app.add_typer(jobs_app, name="jobs")


def _warn_plain_http(address: str | None) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(address or "")
    if parsed.scheme == "http" and parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"warning: {address} is plain HTTP to another host: the job and the cluster's "
            "token travel unencrypted; prefer an SSH tunnel (http://127.0.0.1:8265) or https",
            style="yellow", markup=False, highlight=False)


def _job_line(row) -> str:
    message = f": {row.message}" if row.message and row.status != "SUCCEEDED" else ""
    return f"job {row.submission_id} {row.status}{message}"


@app.command()
@user_errors
def submit(
    config: ConfigArg,
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o",
            help="run directory every node can reach: an object-store URI (s3://bucket/run), "
            "or an absolute path on a shared filesystem with --shared-fs",
        ),
    ],
    address: JobsAddressOpt = None,
    set_: SetOpt = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the submission id and return at once")
    ] = False,
    shared_fs: Annotated[
        bool,
        typer.Option("--shared-fs", help="--out is an absolute path every node mounts"),
    ] = False,
    working_dir: Annotated[
        Path,
        typer.Option(
            "--working-dir",
            help="uploaded as the job's working directory (without runs/, .venv/, .git/, "
            "caches); must hold CONFIG",
        ),
    ] = Path("."),
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="KEY=VALUE for the job's processes, repeatable"),
    ] = None,
    submission_id: Annotated[
        str | None, typer.Option("--submission-id", help="choose the submission id")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress lines in the job's log")
    ] = False,
) -> None:
    """Submit `datamodels run CONFIG --out URI` to a Ray cluster as a Ray Job, print its
    submission id and (unless --no-wait) follow its log; exits 0 when the job succeeded,
    1 when it failed or was stopped."""
    from datamodels import jobs

    jobs.check_out(out, shared_fs)
    _load(config, set_)  # a config mistake is reported here, not in the job's log
    config_rel = jobs.config_in_working_dir(config, working_dir)
    spec = jobs.runtime_env(working_dir, jobs.parse_env(env or []))
    _warn_plain_http(address)
    client = jobs.client(address)
    job_id = jobs.submit(client, config_rel, out, set_ or [], spec, quiet, submission_id)
    out_console.print(job_id, highlight=False, markup=False)
    err_console.print(
        f"submitted: {jobs.entrypoint(config_rel, out, set_ or [], quiet)} (working dir "
        f"{spec['working_dir']}); `datamodels jobs logs {job_id}` or "
        f"`datamodels jobs stop {job_id}`",
        highlight=False, markup=False)
    if no_wait:
        return
    try:
        row = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        err_console.print(
            f"stopped following; job {job_id} keeps running (`datamodels jobs stop {job_id}`)",
            highlight=False, markup=False)
        raise typer.Exit(130) from None
    err_console.print(_job_line(row), highlight=False, markup=False)
    if row.status != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("list")
@user_errors
def jobs_list(address: JobsAddressOpt = None) -> None:
    """Submitted jobs, oldest first: id, status, start time, entrypoint."""
    import datetime

    from datamodels import jobs

    rows = jobs.list_jobs(jobs.client(address))
    table = Table()
    for column in ("submission_id", "status", "started", "entrypoint"):
        table.add_column(column)
    for row in rows:
        started = (
            datetime.datetime.fromtimestamp(row.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if row.start_time
            else ""
        )
        table.add_row(row.submission_id, row.status, started, row.entrypoint)
    out_console.print(table)


@jobs_app.command("status")
@user_errors
def jobs_status(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """One line: the job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED) and message."""
    from datamodels import jobs

    out_console.print(
        _job_line(jobs.status(jobs.client(address), job_id)), highlight=False, markup=False
    )


@jobs_app.command("logs")
@user_errors
def jobs_logs(
    job_id: JobIdArg,
    address: JobsAddressOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing until the job ends")
    ] = False,
) -> None:
    """The job's log so far (with --follow: until it ends, exiting 1 unless it succeeded)."""
    from datamodels import jobs

    client = jobs.client(address)
    if not follow:
        sys.stdout.write(jobs.logs(client, job_id))
        return
    row = jobs.follow(client, job_id)
    err_console.print(_job_line(row), highlight=False, markup=False)
    if row.status != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("stop")
@user_errors
def jobs_stop(job_id: JobIdArg, address: JobsAddressOpt = None) -> None:
    """Stop a running job (the run directory keeps every finished shard: resubmit to resume)."""
    from datamodels import jobs

    client = jobs.client(address)
    sent = jobs.stop(client, job_id)
    row = jobs.wait(client, job_id, timeout_s=30.0) if sent else jobs.status(client, job_id)
    prefix = "" if sent else "already ended: "
    out_console.print(prefix + _job_line(row), highlight=False, markup=False)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="datamodels")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
