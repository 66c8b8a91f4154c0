"""The commands that read or tidy a run: ``status``, ``compact``, ``verify`` and ``query``."""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from datamodels import api
from datamodels.cli.common import (
    RunArg,
    err_console,
    existing_run,
    out_console,
    saved_config,
    user_errors,
)
from datamodels.stages.status import plan_status
from datamodels.store import query as query_run
from datamodels.store import verify as verify_run
from datamodels.store.trainer_choice import choice_line, read_trainer_choice


@user_errors
def status(run: RunArg) -> None:
    """Per plan: models planned, done, failed (attempts spent), waiting (a removal or stored
    plan before its masks are written) and missing; per stage of the pipeline: done, stale
    (its inputs or settings changed since), missing, or - (not run), with the command that
    brings a stale or missing one up to date."""
    from datamodels.store.checkpoints import read_checkpoint_index  # pulls in torch

    handle = existing_run(run)
    config = saved_config(handle)
    frame = plan_status(config, handle)
    table = Table(title=f"{run}")
    for column in frame.columns:
        table.add_column(column, justify="left" if column == "plan" else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    out_console.print(table)
    stages = Table(title="stages")
    for column in ("stage", "state", "to bring it up to date"):
        stages.add_column(column, justify="left")
    for row in api.stage_states(handle, config).itertuples(index=False):
        todo = row.state in ("stale", "missing")
        why = f" (code version: {row.changed})" if row.changed else ""
        stages.add_row(row.stage, row.state, row.command.replace("RUN", run) + why if todo else "")
    out_console.print(stages)
    duplicates = [p for p in handle.valid_shards()[1] if p.kind == "duplicate"]
    if duplicates:  # done counts each id once; say that some are stored more than once
        out_console.print(
            f"warning: {len(duplicates)} duplicate model id problem(s) in {run}/models "
            f"(first: {duplicates[0].message}); run `datamodels verify {run}`",
            style="yellow", markup=False, highlight=False)
    choice = read_trainer_choice(handle.fs)
    if choice is not None:  # which path model.factory models trained by, and why
        out_console.print(choice_line(choice), highlight=False, markup=False)
    index = read_checkpoint_index(handle.fs)
    if len(index):
        epochs = ", ".join(str(e) for e in sorted(index["epoch"].unique()))
        out_console.print(
            f"checkpoints: {index['model_id'].nunique()} models (epochs {epochs}), "
            f"{len(index)} files in {run}/checkpoints/"
        )


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
    summary = api.compact(existing_run(run), target_rows=rows, console=err_console)
    out_console.print(
        f"compact: {run}/models: {summary.shards_before} -> {summary.shards_after} shards "
        f"({summary.models} models, {summary.merged} merged files written)",
        highlight=False,
    )


@user_errors
def verify(run: RunArg) -> None:
    """Check every table and shard: torn files, wrong schema, duplicate ids, length mismatches,
    corrupt pages (checksums), shards of another config, masks that differ from the plan."""
    problems = verify_run(existing_run(run))
    if not problems:
        out_console.print(f"verify: {run}: OK")
        return
    for p in problems:
        out_console.print(f"{p.kind}: {p.file}: {p.message}", highlight=False, soft_wrap=True)
    out_console.print(f"verify: {len(problems)} problem(s)")
    raise typer.Exit(1)


@user_errors
def query(
    run: RunArg, sql: Annotated[str, typer.Argument(help="a read-only SQL query (DuckDB)")]
) -> None:
    """Run read-only SQL over the run's tables (views: models, examples, failures, ...)."""
    frame = query_run(existing_run(run), sql)
    with pd.option_context("display.max_rows", 200, "display.width", 200):
        print(frame.to_string(index=False))
