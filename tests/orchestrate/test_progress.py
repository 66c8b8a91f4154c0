"""Progress in logs: plain lines, not a live bar."""

from __future__ import annotations

import io
import time

from rich.console import Console
from rich.table import Table

from datamodels.orchestrate.progress import Progress, format_eta, log_console


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


def test_a_line_every_interval_while_nothing_finishes(monkeypatch):
    monkeypatch.setenv("DATAMODELS_PROGRESS_INTERVAL", "0.05")
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False)
    with Progress(2200, 1050, console=console, what="models") as progress:
        assert progress.interval == 0.05
        time.sleep(0.5)  # one long unit: the log still hears from the stage
    lines = sink.getvalue().splitlines()
    assert len(lines) >= 4
    assert all(
        line.startswith("models 1,050/2,200 (48%) 0/min ETA ? failed 0") for line in lines[:-1]
    )


def test_eta_reads_minutes_and_seconds():
    assert format_eta(25) == "0:25" and format_eta(23 * 60 + 5) == "23:05"
    assert format_eta(3723) == "1:02:03" and format_eta(None) == "?"


def test_log_console_never_folds_a_message_at_80_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    console = log_console()
    sink = io.StringIO()
    console.file = sink
    message = "error: " + "s3://bucket/a-rather-long/run-directory/path " * 5
    console.print(message, highlight=False)
    table = Table("plan", "planned")
    table.add_row("a-plan-name-" * 10, "1")
    console.print(table)
    lines = sink.getvalue().splitlines()
    assert lines[0].rstrip() == message.rstrip()
    assert any("a-plan-name-" * 10 in line for line in lines)  # the table is not squeezed
