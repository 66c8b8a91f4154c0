"""The executors that run a stage's units: `RayExecutor` (tasks on a local or remote Ray
cluster) and `SerialExecutor` (in this process: tests, small reductions, and every stage
where Ray is not installed). `default_executor` picks one: Ray when it is installed, else
in-process; ``DATAMODELS_EXECUTOR=local`` (or ``ray``) chooses. Ray is an optional
dependency (the ``ray`` extra) and imported only in this package.

Both do the same thing: hand every unit to ``stage.compute`` with the process's context,
pass the result (or the error text) back to ``stage.on_result`` / ``stage.on_failure`` in the
driver, and run again whatever units those return. A stage's shared inputs
(``Unit.shared``) are computed once (``stage.compute_shared``): on Ray as a task of their own
whose result the units take through the object store, submitted with the first unit that
needs it and one key ahead, and released when the last such unit is done.

Ray specifics: bounded in-flight tasks (``ray.wait``), the stage object sent once through
the object store (``ray.put``), Ray's own retries for dead workers (``max_retries``; an
exception raised by the unit is not retried by Ray but reported to the stage), and
``max_calls=0`` so worker processes live on with their context.
"""

from __future__ import annotations

import os
from collections import deque
from contextlib import contextmanager
from typing import Any

from datamodels.errors import ConfigError, DatamodelsError, MissingDependencyError
from datamodels.orchestrate.channel import POLL_S, channel_sink, open_channel
from datamodels.orchestrate.context import Context, context, unit_reporting
from datamodels.orchestrate.optional import RAY_INSTALL, ray_installed
from datamodels.orchestrate.runtime_env import pythonpath_for_workers


def error_text(err: BaseException) -> str:
    """One line for a failed unit: the named error's own message, else the last line."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, DatamodelsError):
        return str(cause)
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def error_type(err: BaseException) -> str:
    cause = getattr(err, "cause", None)
    return type(cause).__name__ if isinstance(cause, BaseException) else type(err).__name__


def compute_unit(stage, unit, shared=None):
    """Task body: one unit of ``stage`` in this process's context; the progress its loops
    report goes to the driver's channel."""
    with unit_reporting(stage.name, unit, channel_sink):
        return stage.compute(context(), unit, shared)


def compute_shared(stage, key):
    """Task body: one shared input of ``stage``."""
    return stage.compute_shared(context(), key)


def infrastructure_error(err: BaseException) -> bool:
    """Whether ``err`` is the machine's or the cluster's fault, not the unit's: an OS error
    (disk full, read-only or lost files, broken connections), memory exhausted, or a Ray
    system error (a worker or node died, an object was lost) rather than an exception the
    unit itself raised."""
    import sys

    cause = getattr(err, "cause", err)
    if isinstance(cause, (OSError, MemoryError)):
        return True
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    from ray.exceptions import RayError, RayTaskError

    return isinstance(err, RayError) and not isinstance(err, RayTaskError)


def user_error(err: BaseException) -> DatamodelsError | None:
    """The named error behind ``err`` (raised in this process or in a task), if any: a user's
    or the run directory's mistake, which no retry fixes and no model's budget should pay."""
    cause = getattr(err, "cause", err)
    return cause if isinstance(cause, DatamodelsError) else None


class SerialExecutor:
    """Runs units one after another in this process, with the same callbacks as Ray. Each
    call gets a fresh context, so what a stage cached (its tables) is freed when it ends.
    The executor of every stage where Ray is not installed (`default_executor`)."""

    def run(self, stage, units: list, progress) -> None:
        ctx = Context()
        queue = deque(units)
        shared: dict[Any, Any] = {}
        while queue:
            unit = queue.popleft()
            try:
                if unit.shared is not None and unit.shared not in shared:
                    shared.clear()  # one at a time: they can be large
                    shared[unit.shared] = stage.compute_shared(ctx, unit.shared)
                with unit_reporting(stage.name, unit, getattr(progress, "partial", None)):
                    result = stage.compute(ctx, unit, shared.get(unit.shared))
            except DatamodelsError:
                raise  # no retry helps, and the message is already one line
            except Exception as err:  # noqa: BLE001 - the stage decides what a failure means
                queue.extend(stage.on_failure(unit, err, progress))
            else:
                queue.extend(stage.on_result(unit, result, progress))


EXECUTOR_ENV = "DATAMODELS_EXECUTOR"


def default_executor(address: str | None = None) -> RayExecutor | SerialExecutor:
    """The executor of a stage: `RayExecutor` (``address``, RAY_ADDRESS, or a local cluster)
    when Ray is installed, else `SerialExecutor` (in this process). ``DATAMODELS_EXECUTOR``
    ``local`` runs in-process even with Ray; ``ray`` insists on Ray. A cluster address
    without Ray is one line, never a silent local run."""
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "local", "ray"):
        raise ConfigError(f"{EXECUTOR_ENV}={choice!r}: choose local or ray (or leave it unset)")
    if choice == "local":
        if address:
            raise ConfigError(
                f"--address {address} asks for a Ray cluster but {EXECUTOR_ENV}=local runs in "
                "this process; drop one of them"
            )
        return SerialExecutor()
    cluster = address or os.environ.get("RAY_ADDRESS") or None
    if not ray_installed():
        if choice == "ray" or cluster not in (None, "local"):
            where = f"the Ray cluster at {cluster}" if cluster else f"{EXECUTOR_ENV}=ray"
            raise MissingDependencyError("Ray", where, RAY_INSTALL)
        return SerialExecutor()
    return RayExecutor(address)


# Ray's per-node agents outlive a local cluster whose driver was SIGKILLed: the raylet dies,
# they are re-parented to init and ignore SIGTERM, holding memory until the machine reboots.
_AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def reap_orphaned_ray_agents() -> list[int]:
    """SIGKILL this user's Ray agents whose raylet is gone (parent pid 1); returns their pids.
    Linux only (reads /proc); elsewhere nothing is done."""
    import signal

    reaped = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            owner = os.stat(f"/proc/{entry}").st_uid
        except (OSError, ValueError, IndexError):
            continue
        if cmdline.startswith(_AGENTS) and parent == 1 and owner == os.getuid():
            try:
                os.kill(int(entry), signal.SIGKILL)
                reaped.append(int(entry))
            except OSError:
                continue
    return reaped


def joined_cluster() -> str | None:
    """``"ray"`` when this process is a driver of a Ray cluster it did not start itself (a
    notebook's ``ray.init(address=...)``); None when Ray is not running here, or runs a
    cluster this process started on this machine (whose devices are this machine's)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    node = getattr(ray._private.worker.global_worker, "node", None)  # ray: who started it
    return None if getattr(node, "head", False) else "ray"


def init_ray(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local one (first
    reaping the agents a killed local cluster left behind) whose processes listen on
    127.0.0.1 only, without a dashboard. Never joins a cluster just because ``ray start``
    ran on this machine: without an address the run is local."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        reap_orphaned_ray_agents()
        # a local cluster is this process's own: no token to set up (and no warning about it)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": True}
    if address is not None:
        ray.init(address=address, **kwargs)
        return
    with loopback_only(), pythonpath_for_workers():  # the driver's sys.path reaches workers
        ray.init(address="local", _node_ip_address=LOOPBACK, **kwargs)


LOOPBACK = "127.0.0.1"
# Ray resolves 127.0.0.1 to the machine's address unless it believes it runs where clusters
# are not allowed (its macOS/Windows default, or this variable set to 0); then its GCS,
# raylet, agents and workers listen on 127.0.0.1 only.
_CLUSTER_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only():
    """While a local cluster starts: every Ray process it starts (GCS, raylet, agents and,
    through the raylet's environment, workers) binds 127.0.0.1, and the dashboard is off."""
    from ray._private import ray_constants  # ray: the local cluster's settings

    saved = os.environ.get(_CLUSTER_VARIABLE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop(_CLUSTER_VARIABLE, None)
        else:
            os.environ[_CLUSTER_VARIABLE] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]


class RayExecutor:
    """Runs units as Ray tasks, at most ``max_in_flight`` at a time (default: 2 per slot)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def slots(self, num_cpus: float, num_gpus: float) -> int:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        slots = (
            int(cpus // num_cpus) if num_gpus == 0 else int(min(cpus // num_cpus, gpus // num_gpus))
        )
        if slots < 1:
            raise DatamodelsError(
                f"the Ray cluster ({cpus:g} CPU, {gpus:g} GPU) cannot fit one task of "
                f"{num_cpus:g} CPU and {num_gpus:g} GPU; lower resources.num_cpus / num_gpus "
                "(or gradients.num_cpus)"
            )
        return slots

    def run(self, stage, units: list, progress) -> None:
        # One loop on purpose: submission, shared-input lifetimes and callbacks share state
        # (pending refs, open units per shared key) that helpers would have to pass around.
        import ray

        init_ray(self.address)
        res = stage.resources()
        slots = self.slots(res.num_cpus, res.num_gpus)
        limit = res.max_in_flight or 2 * slots
        units = stage.spread(units, slots)
        options = dict(
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            max_retries=res.retries,
            retry_exceptions=False,
            max_calls=0,
        )
        remote_unit = ray.remote(**options)(compute_unit)
        remote_shared = ray.remote(**options)(compute_shared)
        stage_ref = ray.put(stage)
        channel = open_channel()  # the tasks' progress within their units
        queue: deque = deque(units)
        pending: dict = {}
        shared_refs: dict = {}
        open_units: dict = {}  # shared key -> units submitted or queued that take it

        def count(unit, change: int) -> None:
            if unit.shared is not None:
                open_units[unit.shared] = open_units.get(unit.shared, 0) + change
                if open_units[unit.shared] == 0:
                    shared_refs.pop(unit.shared, None)  # frees it in the object store

        def shared_ref(unit):
            if unit.shared is None:
                return None
            ahead = next((u.shared for u in queue if u.shared not in (None, unit.shared)), None)
            for key in (unit.shared, ahead):
                if key is None:
                    continue
                if key not in shared_refs:
                    shared_refs[key] = remote_shared.remote(stage_ref, key)
            return shared_refs[unit.shared]

        for unit in units:
            count(unit, +1)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    unit = queue.popleft()
                    pending[remote_unit.remote(stage_ref, unit, shared_ref(unit))] = unit
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                if channel is not None:
                    channel.poll(stage.name, progress)
                if not ready:
                    continue
                unit = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as err:  # noqa: BLE001 - worker death, OOM, bugs: the stage decides
                    if user_error(err) is not None:
                        raise user_error(err) from None  # as the serial executor does
                    again = stage.on_failure(unit, err, progress)
                else:
                    again = stage.on_result(unit, result, progress)
                for retry in again:
                    count(retry, +1)
                queue.extend(again)
                count(unit, -1)
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
