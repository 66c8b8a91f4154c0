"""``dm.serve(run)``: browse a run from a notebook; the server runs in a background thread."""

from __future__ import annotations

from datamodels.browse import Served, start
from datamodels.store import Run


def serve(run: Run | str, port: int = 0, host: str = "127.0.0.1", k: int = 8) -> Served:
    """Start the `datamodels serve` app over ``run`` in a daemon thread and return its URL
    (a ``str``; ``.stop()`` ends the server). ``port`` 0 picks a free port; the server reads
    the run only and stops with the Python process."""
    return start(run, host=host, port=port, k=k)
