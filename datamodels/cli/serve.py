"""The ``serve`` command: a local web app to browse a run (`datamodels.browse`), read-only."""

from __future__ import annotations

from typing import Annotated

import typer

from datamodels.api.serve import serve_index
from datamodels.browse import DEFAULT_PORT, serve_forever
from datamodels.cli.common import RunArg, existing_run, out_console, user_errors


@user_errors
def serve(
    run: RunArg,
    port: Annotated[
        int, typer.Option("--port", "-p", help="port to listen on (0: a free one)")
    ] = DEFAULT_PORT,
    host: Annotated[
        str,
        typer.Option("--host", help="address to bind; 127.0.0.1 keeps it to this machine"),
    ] = "127.0.0.1",
    k: Annotated[int, typer.Option("--top", "-k", help="how many of each ranking to show")] = 8,
    index: Annotated[
        bool,
        typer.Option(
            "--index",
            help="first write the browse index (browse/*.parquet: the rankings precomputed, "
            "so a large run's pages read only what they show); the one write",
        ),
    ] = False,
) -> None:
    """Browse a run in the browser: every test example and what it rests on by every method,
    every training example and whom it helps and hurts, mislabel candidates, leakage pairs,
    the methods' LDS. Reads the run only (--index writes the browse index first); Ctrl-C
    stops."""

    def announce(line: str) -> None:
        out_console.print(line, highlight=False, soft_wrap=True)

    run = existing_run(run)
    if index:
        serve_index(run)
    serve_forever(run, host=host, port=port, k=k, announce=announce)
