"""``datamodels attribute``: the gradient estimators on a model trained elsewhere."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from datamodels import api
from datamodels.cli.common import (
    AddressOpt,
    ConfigArg,
    OutOpt,
    QuietOpt,
    SetOpt,
    default_out,
    err_console,
    load,
    user_errors,
)
from datamodels.errors import DatamodelsError

CheckpointOpt = Annotated[
    list[str],
    typer.Option(
        "--checkpoint", "-c",
        help="a model's state_dict file; several of one model's checkpoints comma-separated "
        "in training order (TracIn sums over them); repeat for several models",
    ),
]


def _floats(text: str | None) -> float | list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DatamodelsError(f"--lr {text!r}: give a number or comma-separated numbers") from None
    return values[0] if len(values) == 1 else values


@user_errors
def attribute(
    config: ConfigArg,
    checkpoint: CheckpointOpt,
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help="gradient estimator, repeatable (default: trak)"),
    ] = None,
    lr: Annotated[
        str | None,
        typer.Option("--lr", help="learning rate after each checkpoint, for TracIn: one value "
                     "or one per checkpoint, comma-separated (default: train.lr)"),
    ] = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    address: AddressOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Attribute a model you trained yourself: TRAK, TracIn, representer points, influence
    (any gradient estimator that reads checkpoints) on its state_dict files, built by
    model.factory, over the config's dataset; writes scores/<method>.parquet (+ self_scores/)
    into the run directory, for evaluate and the report."""
    cfg = load(config, set_)
    target = default_out(cfg, out)
    models = [[p for p in group.split(",") if p.strip()] for group in checkpoint]
    started = time.perf_counter()
    written = api.attribute(
        cfg, models, target, methods=method or ["trak"], lr=_floats(lr),
        address=address, show_progress=not quiet, console=err_console,
    )
    seconds = time.perf_counter() - started
    for name, rows in written.items():
        if not rows:
            err_console.print(f"attribute: {name} up to date; nothing to do", highlight=False)
            continue
        parts = ", ".join(f"{k}: {v}" + ("" if k == "models" else " rows") for k, v in rows.items())
        err_console.print(
            f"attribute: {name} in {target}/scores/{name}.parquet ({parts}; {seconds:.1f}s "
            "for all)", highlight=False,
        )
