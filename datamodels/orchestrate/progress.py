"""Progress of long stages: a live bar on a terminal, plain lines in logs.

On a terminal (rich): done / total, rate, ETA, failures. Anywhere else (a Ray job's log, a
file, CI) a live bar would print nothing useful, so a plain line is printed every
``interval`` seconds (default 10, or ``DATAMODELS_PROGRESS_INTERVAL``), whether or not a unit
finished in between, e.g. ``models 1,050/2,200 (48%) 2,971/min ETA 0:25 failed 0``, and one
summary line at the end. `log_console` is the console for such output: it never wraps a
message at 80 columns when stderr is not a terminal.

A unit that runs long reports how far it is (``partial``: its fraction done, from the
loops inside it through `datamodels.trainers.unit_progress`), so the bar and the lines
move between finished units: ``tasks 2.4/16 (15%)``. When the unit finishes, its partial
share is replaced by its whole size (``advance``). ``reported`` keeps the last reports
(unit key, fraction) in order, for whoever wants to read them back.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

import rich.progress as rp
from rich.console import Console

INTERVAL_ENV = "DATAMODELS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 10.0
# Wide enough that a table or a long path is never folded; rich only pads to the content.
_LOG_WIDTH = 1000


def log_console(stderr: bool = True) -> Console:
    """A console for messages: soft-wrapped (one line per message) and, when its stream is not
    a terminal (job logs, files, CI), as wide as the content instead of rich's 80 columns."""
    console = Console(stderr=stderr, soft_wrap=True)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, soft_wrap=True, width=_LOG_WIDTH)
    return console


def _jupyter_widgets(console: Console) -> bool:
    """In a Jupyter kernel with ipywidgets, where rich draws a live bar as a widget."""
    if not console.is_jupyter:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress_interval(default: float = DEFAULT_INTERVAL_S) -> float:
    """Seconds between plain progress lines: ``DATAMODELS_PROGRESS_INTERVAL`` or ``default``."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        return default
    return value if value >= 0 else default


def format_eta(seconds: float | None) -> str:
    """``0:25`` (m:ss) under an hour, ``1:02:03`` (h:mm:ss) above, ``?`` when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts work done (models, targets, tasks); ``failed_attempt(n, given_up)`` counts failed
    attempts and the models given up. ``interval``: seconds between plain lines (None: from
    the environment, see `progress_interval`)."""

    def __init__(
        self,
        total: int,
        done: int,
        enabled: bool = True,
        console: Console | None = None,
        what: str = "models",
        interval: float | None = None,
    ) -> None:
        self.total, self.start_done, self.done, self.what = total, done, done, what
        self.attempts_failed = 0
        self.given_up = 0
        self.enabled = enabled
        self.console = console or log_console()
        # a Jupyter kernel (not a terminal) shows rich's live bar as a widget when it can
        self.plain = enabled and not self.console.is_terminal and not _jupyter_widgets(
            self.console
        )
        self.interval = progress_interval() if interval is None else interval
        self.last_line = time.perf_counter()
        self.started = time.perf_counter()
        self._printing = threading.Lock()
        self._partial: dict[Any, float] = {}  # running unit -> the share of it done (units)
        self._partial_lock = threading.Lock()  # the ticker thread reads what a poller writes
        self.reported: deque[tuple[Any, float]] = deque(maxlen=10_000)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self.progress = rp.Progress(
            rp.TextColumn("[bold]{task.description}"),
            rp.BarColumn(),
            rp.MofNCompleteColumn(),
            rp.TextColumn("{task.fields[rate]}"),
            rp.TextColumn("ETA"),
            rp.TimeRemainingColumn(),
            rp.TextColumn("{task.fields[failures]}"),
            console=self.console,
            disable=not enabled or self.plain,
            transient=False,
        )
        self.task = self.progress.add_task(what, total=total, completed=done, rate="", failures="")

    def __enter__(self) -> Progress:
        self.progress.__enter__()
        if self.plain and self.interval > 0:
            # A unit can take longer than the interval (a batch of big models): the ticker
            # keeps a job's log saying where the stage is while nothing finishes.
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self._refresh()
        self.progress.__exit__(*exc)
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            new = self.done - self.start_done
            rate = 60 * new / elapsed if elapsed > 0 else 0.0
            self._print(
                f"{self.what}: {new:,} new in {elapsed:.1f}s ({rate:,.0f}/min); "
                f"{self.attempts_failed} failed attempts, {self.given_up} given up"
            )

    def _tick(self) -> None:
        while not self._stop.wait(self.interval / 4):
            self._plain_line_if_due()

    def _print(self, text: str) -> None:
        with self._printing:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    @property
    def shown(self) -> float:
        """Finished units plus the reported shares of the running ones (at most ``total``)."""
        with self._partial_lock:
            running = sum(self._partial.values())
        return min(float(self.total), self.done + running)

    def rate(self) -> float:
        """Units per minute since the start."""
        elapsed = time.perf_counter() - self.started
        return 60 * (self.shown - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``models 1,050/2,200 (48%) 2,971/min ETA 0:25 failed 0`` (a running unit's share
        shows as a decimal: ``tasks 2.4/16 (15%)``)."""
        shown = self.shown
        share = 100 * shown / self.total if self.total else 100.0
        rate = self.rate()
        left = (self.total - shown) / rate * 60 if rate > 0 else None
        count = f"{shown:,.0f}" if shown == int(shown) else f"{shown:,.1f}"
        return (
            f"{self.what} {count}/{self.total:,} ({share:.0f}%) {rate:,.0f}/min "
            f"ETA {format_eta(left)} failed {self.given_up}"
        )

    def _plain_line_if_due(self) -> None:
        with self._printing:  # the ticker and the stage's thread never both print one line
            now = time.perf_counter()
            if now - self.last_line < self.interval:
                return
            self.last_line = now
            self.console.print(self.line(), highlight=False, markup=False, soft_wrap=True)

    def _refresh(self) -> None:
        if self.plain:
            self._plain_line_if_due()
            return
        rate = f"{self.rate():,.0f}/min" if self.shown > self.start_done else ""
        failures = (
            f"failed attempts {self.attempts_failed}, given up {self.given_up}"
            if self.attempts_failed
            else ""
        )
        self.progress.update(self.task, completed=self.shown, rate=rate, failures=failures)

    def advance(self, n: int) -> None:
        self.done += n
        self._refresh()

    def partial(self, key: Any, fraction: float | None, size: float = 1) -> None:
        """Running unit ``key`` (of ``size`` units) is ``fraction`` done; None: it ended (its
        share goes; ``advance`` counts it whole). A unit's share never goes back."""
        with self._partial_lock:
            if fraction is None:
                self._partial.pop(key, None)
            else:
                fraction = min(1.0, max(0.0, float(fraction)))
                self.reported.append((key, fraction))
                self._partial[key] = max(self._partial.get(key, 0.0), fraction * size)
        self._refresh()

    def failed_attempt(self, n: int, given_up: int) -> None:
        self.attempts_failed += n
        self.given_up += given_up
        self._refresh()
