"""Progress in logs: plain lines, not a live bar."""

from __future__ import annotations

import io

from rich.console import Console

from datamodels.orchestrate.progress import Progress


def test_plain_lines_when_not_a_terminal():
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=40)
    with Progress(2200, 1000, console=console, what="models", interval=0.0) as progress:
        progress.advance(50)
        progress.failed_attempt(3, 1)
    lines = sink.getvalue().splitlines()
    assert lines[0].startswith("models 1,050/2,200 (48%) ") and lines[0].endswith("failed 0")
    assert "/min ETA " in lines[0]
    assert lines[-1].startswith("models: 50 new in ")
    assert lines[-1].endswith("3 failed attempts, 1 given up")
    assert all("\x1b[" not in line for line in lines)  # no terminal control codes in a log
