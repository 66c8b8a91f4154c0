"""``dm.serve(run)``: browse a run from a notebook; the server runs in a background thread.
``dm.serve(run, index=True)`` (``datamodels serve --index RUN``) first writes the browse index
(stage ``browse_index``: the rankings the pages look up, so a large run's pages read only
what they show)."""

from __future__ import annotations

from datamodels.api._common import as_run, config_and_run, locked
from datamodels.browse import Served, start
from datamodels.stages.browse_index import BrowseIndexStage
from datamodels.store import Run


def serve_index(run: Run | str, show_progress: bool = True) -> None:
    """Write ``browse/*.parquet`` (stage ``browse_index``), nothing when it is current."""
    config, run, _ = config_and_run(as_run(run), None)
    locked(run, BrowseIndexStage(config, run), None, show_progress)


def serve(
    run: Run | str, port: int = 0, host: str = "127.0.0.1", k: int = 8, index: bool = False
) -> Served:
    """Start the `datamodels serve` app over ``run`` in a daemon thread and return its URL
    (a ``str``; ``.stop()`` ends the server). ``port`` 0 picks a free port; the server reads
    the run only and stops with the Python process; ``index`` first brings the browse index
    up to date (the one write)."""
    if index:
        serve_index(run, show_progress=False)
    return start(run, host=host, port=port, k=k)
