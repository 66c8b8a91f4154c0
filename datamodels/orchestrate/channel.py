"""How a Ray task's progress within its unit reaches the driver's bar: a small named actor.

The driver opens the channel (`open_channel`) before it submits a stage's tasks; a task's
sink (`channel_sink`, used by `context.unit_reporting`) sends (key, fraction, size) to it,
at most one report per unit every ``THROTTLE_S`` seconds plus the one that says the unit
ended; the driver's loop takes what arrived (`Channel.poll`) each time it wakes, at least
every ``POLL_S`` seconds, and hands it to ``Progress.partial``. A task that finds no channel
(none opened, or an older driver) reports nothing: progress never fails a unit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

NAME = "datamodels-progress"
POLL_S = 1.0
THROTTLE_S = 0.5
_RETRY_S = 5.0


class _Mailbox:
    """The actor: the latest report per unit key, handed over and cleared by ``take``."""

    def __init__(self) -> None:
        self.latest: dict = {}

    def put(self, key, fraction, size) -> None:
        self.latest[key] = (fraction, size)

    def take(self) -> dict:
        out, self.latest = self.latest, {}
        return out


class Channel:
    """The driver's end (see the module docstring)."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def poll(self, stage_name: str, progress: Any) -> None:
        """Hand the reports of ``stage_name``'s units that arrived to ``progress.partial``."""
        import ray  # ray: the channel is an actor

        partial = getattr(progress, "partial", None)
        try:
            latest = ray.get(self.actor.take.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress is best effort; the stage goes on
            return
        for key, (fraction, size) in latest.items():
            if partial is not None and key[0] == stage_name:
                partial(key, fraction, size)


def open_channel() -> Channel | None:
    """This driver's channel (made once per Ray job), or None when it cannot be made."""
    import ray  # ray: the channel is an actor

    try:
        mailbox = ray.remote(num_cpus=0, max_restarts=0)(_Mailbox)
        return Channel(mailbox.options(name=NAME, get_if_exists=True).remote())
    except Exception:  # noqa: BLE001 - progress is best effort; the stage goes on
        return None


_SENDER: dict[str, Any] = {"actor": None, "looked": 0.0, "sent": {}}


def channel_sink(key: Any, fraction: float | None, size: float) -> None:
    """In a Ray task: send one report to the driver's channel (throttled; see the module
    docstring); nothing when there is none."""
    ray = sys.modules.get("ray")  # a task runs where Ray is loaded; elsewhere: no channel
    if ray is None or not ray.is_initialized():
        return
    now = time.monotonic()
    if _SENDER["actor"] is None:
        if now - _SENDER["looked"] < _RETRY_S:
            return
        _SENDER["looked"] = now
        try:
            _SENDER["actor"] = ray.get_actor(NAME)
        except Exception:  # noqa: BLE001 - no channel: report nothing
            return
    sent = _SENDER["sent"]
    if fraction is not None and now - sent.get(key, 0.0) < THROTTLE_S:
        return
    if fraction is None:
        sent.pop(key, None)
    else:
        sent[key] = now
    try:
        _SENDER["actor"].put.remote(key, fraction, size)
    except Exception:  # noqa: BLE001 - a channel gone (driver restarted): look again later
        _SENDER["actor"] = None
