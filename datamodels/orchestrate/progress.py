"""Progress of long stages: a live bar on a terminal, plain lines in logs.

On a terminal (rich): done / total, rate, ETA, failures. Anywhere else (a Ray job's log, a
file, CI) a live bar would print nothing useful, so one plain line is printed at most every
``interval`` seconds, e.g. ``models 1,050/2,200 (48%) 2,971/min ETA 0:00:25 failed 0``,
and one at the end.
"""

from __future__ import annotations

import datetime
import time

import rich.progress as rp
from rich.console import Console


class Progress:
    """Counts work done (models, targets, tasks); ``failed_attempt(n, given_up)`` counts failed
    attempts and the models given up."""

    def __init__(
        self,
        total: int,
        done: int,
        enabled: bool = True,
        console: Console | None = None,
        what: str = "models",
        interval: float = 10.0,
    ) -> None:
        self.total, self.start_done, self.done, self.what = total, done, done, what
        self.attempts_failed = 0
        self.given_up = 0
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.plain = enabled and not self.console.is_terminal
        self.interval, self.last_line = interval, time.perf_counter()
        self.started = time.perf_counter()
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
        return self

    def __exit__(self, *exc: object) -> None:
        self._refresh()
        self.progress.__exit__(*exc)
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            new = self.done - self.start_done
            rate = 60 * new / elapsed if elapsed > 0 else 0.0
            self.console.print(
                f"{self.what}: {new:,} new in {elapsed:.1f}s ({rate:,.0f}/min); "
                f"{self.attempts_failed} failed attempts, {self.given_up} given up",
                highlight=False,
                soft_wrap=True,
            )

    def rate(self) -> float:
        """Units per minute since the start."""
        elapsed = time.perf_counter() - self.started
        return 60 * (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``models 1,050/2,200 (48%) 2,971/min ETA 0:00:25 failed 0``."""
        share = 100 * self.done / self.total if self.total else 100.0
        rate = self.rate()
        left = (self.total - self.done) / rate * 60 if rate > 0 else None
        eta = str(datetime.timedelta(seconds=round(left))) if left is not None else "?"
        return (
            f"{self.what} {self.done:,}/{self.total:,} ({share:.0f}%) {rate:,.0f}/min ETA {eta} "
            f"failed {self.given_up}"
        )

    def _refresh(self) -> None:
        if self.plain:
            now = time.perf_counter()
            if now - self.last_line >= self.interval:
                self.last_line = now
                self.console.print(self.line(), highlight=False, soft_wrap=True)
            return
        rate = f"{self.rate():,.0f}/min" if self.done > self.start_done else ""
        failures = (
            f"failed attempts {self.attempts_failed}, given up {self.given_up}"
            if self.attempts_failed
            else ""
        )
        self.progress.update(self.task, completed=self.done, rate=rate, failures=failures)

    def advance(self, n: int) -> None:
        self.done += n
        self._refresh()

    def failed_attempt(self, n: int, given_up: int) -> None:
        self.attempts_failed += n
        self.given_up += given_up
        self._refresh()
