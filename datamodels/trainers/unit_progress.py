"""Progress within one unit of work, reported from inside its loops.

The loops that make a unit long (training several models, a gradient estimator's blocks of
training points or targets, CG iterations) call ``report(done, total)``; whoever runs the
unit decides where it goes by ``reporting_to(sink)``: a sink takes the unit's fraction done
in [0, 1]. Without a sink (a loop called directly, outside any stage) a report costs one
context-variable lookup and nothing happens.

``within(start, stop)`` maps the reports of a nested loop onto a share of the unit: a unit
made of phases (TRAK's features, then its attribution rows) reports each phase into its own
part of the bar, so the unit's fraction only grows. The sinks live in
`datamodels.orchestrate.context` (in-process: straight into the progress bar; in a Ray
task: through a channel the driver's bar reads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Sink = Callable[[float], None]
_SINK: ContextVar[Sink | None] = ContextVar("datamodels_unit_progress", default=None)
_SPAN: ContextVar[tuple[float, float]] = ContextVar("datamodels_unit_span", default=(0.0, 1.0))


def report(done: float, total: float) -> None:
    """``done`` of ``total`` of the current loop is finished."""
    sink = _SINK.get()
    if sink is None or total <= 0:
        return
    start, stop = _SPAN.get()
    sink(start + (stop - start) * min(1.0, max(0.0, done / total)))


def active() -> bool:
    """Whether a sink listens (a loop may skip work done only to report)."""
    return _SINK.get() is not None


@contextmanager
def reporting_to(sink: Sink | None) -> Iterator[None]:
    """Reports made inside go to ``sink`` (None: nowhere)."""
    token, span = _SINK.set(sink), _SPAN.set((0.0, 1.0))
    try:
        yield
    finally:
        _SPAN.reset(span)
        _SINK.reset(token)


@contextmanager
def within(start: float, stop: float) -> Iterator[None]:
    """Reports made inside fill the share [start, stop] of the enclosing span."""
    outer_start, outer_stop = _SPAN.get()
    width = outer_stop - outer_start
    token = _SPAN.set((outer_start + width * start, outer_start + width * stop))
    try:
        yield
    finally:
        _SPAN.reset(token)
