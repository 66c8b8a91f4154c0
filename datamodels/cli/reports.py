"""The report commands: ``report`` (one HTML page per run), ``transfer-report``, and
``transfer-counterfactual``, which computes what the transfer report's last section reads."""

from __future__ import annotations

from typing import Annotated

import typer

from datamodels import api
from datamodels.cli.common import (
    AddressOpt,
    QuietOpt,
    RunArg,
    err_console,
    existing_run,
    out_console,
    saved_config,
    user_errors,
)
from datamodels.errors import DatamodelsError


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
    from datamodels.report import build_report  # pulls in matplotlib and torch

    path = build_report(existing_run(run), out)
    out_console.print(f"report: {path}", highlight=False, soft_wrap=True)


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
        typer.Option("--counterfactual/--no-counterfactual", help="show the counterfactual "
                     "that `datamodels transfer-counterfactual` computed (a note naming that "
                     "command when it has not run)"),
    ] = True,
) -> None:
    """A transfer run's report: per target class the most helpful and harmful source classes,
    the target examples a source class moves most, and the counterfactual (target accuracy
    with all source classes vs without the most harmful ones). Reads the run only."""
    # report.transfer pulls in matplotlib and torch (through datamodels/report/__init__.py)
    from datamodels.report import transfer as report_transfer

    handle = existing_run(run)
    _require_transfer(run, saved_config(handle))
    path = report_transfer.build_transfer_report(
        handle, out, source_class, counterfactual=None if counterfactual else False
    )
    out_console.print(f"transfer report: {path}", highlight=False, soft_wrap=True)


def _require_transfer(run: str, config) -> None:
    if config.transfer is None:
        raise DatamodelsError(
            f"{run} is not a transfer run (its config has no transfer section); see "
            "configs/transfer_digits.yaml, and `datamodels report` for this run"
        )


@user_errors
def transfer_counterfactual(
    run: RunArg,
    k: Annotated[int, typer.Option("--k", help="how many source classes to remove")] = 4,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """A transfer run's counterfactual: remove the k most harmful source classes (mask 1 of
    the config's stored plan of two masks), retrain through the driver, and compare target
    accuracy → transfer/counterfactual_*.parquet (read by `transfer-report`)."""
    handle = existing_run(run)
    _require_transfer(run, saved_config(handle))
    result = api.transfer_counterfactual(
        handle, k=k, address=address, show_progress=not quiet, console=err_console
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
