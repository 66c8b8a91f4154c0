"""A live progress bar for long stages: done / total, rate, ETA, failures (rich)."""

from __future__ import annotations

import time

import rich.progress as rp
from rich.console import Console


class Progress:
    """Counts work done (models, targets, tasks); ``failed_attempt(n, given_up)`` counts failed
    attempts and the models given up."""

    def __init__(self, total: int, done: int, enabled: bool = True, console: Console | None = None,
                 what: str = "models") -> None:
        self.total, self.start_done, self.what = total, done, what
        self.attempts_failed = 0
        self.given_up = 0
        self.enabled = enabled
        self.started = time.perf_counter()
        self.progress = rp.Progress(
            rp.TextColumn("[bold]{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
            rp.TextColumn("{task.fields[rate]}"), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
            rp.TextColumn("{task.fields[failures]}"),
            console=console, disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task(what, total=total, completed=done, rate="", failures="")

    def __enter__(self) -> Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._refresh()
        self.progress.__exit__(*exc)
        if self.enabled:
            done = self.progress.tasks[0].completed - self.start_done
            elapsed = time.perf_counter() - self.started
            rate = 60 * done / elapsed if elapsed > 0 else 0.0
            self.progress.console.print(
                f"{self.what}: {done:.0f} new in {elapsed:.1f}s ({rate:,.0f}/min); "
                f"{self.attempts_failed} failed attempts, {self.given_up} given up"
            )

    def _refresh(self) -> None:
        elapsed = time.perf_counter() - self.started
        done = self.progress.tasks[0].completed - self.start_done
        rate = f"{60 * done / elapsed:,.0f}/min" if elapsed > 0 and done else ""
        failures = (f"failed attempts {self.attempts_failed}, given up {self.given_up}"
                    if self.attempts_failed else "")
        self.progress.update(self.task, rate=rate, failures=failures)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)
        self._refresh()

    def failed_attempt(self, n: int, given_up: int) -> None:
        self.attempts_failed += n
        self.given_up += given_up
        self._refresh()
