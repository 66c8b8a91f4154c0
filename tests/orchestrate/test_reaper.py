"""Ray agents left behind by a SIGKILLed local cluster are reaped by the next driver."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from datamodels.orchestrate.executor import reap_orphaned_ray_agents


def _pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().startswith(name.encode()):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


AGENT = "exec -a ray::DashboardAgent sleep 300"


def test_orphaned_agents_are_reaped_and_others_left_alone():
    """Only the agents this test starts are judged, so agents of other clusters on the
    machine (another checkout's tests, a user's Ray job) change nothing."""
    # an orphan: its parent shell exits at once, so it is re-parented to init; it ignores
    # SIGTERM and is named as Ray names its dashboard agent. The subshell execs the agent,
    # so ``$!`` is the orphan's own pid (its output goes nowhere: run() returns at once).
    started = subprocess.run(
        ["bash", "-c", f"(trap '' TERM; {AGENT}) >/dev/null 2>&1 & echo $!"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    orphan = int(started.stdout.split()[-1])
    # an agent of our own (child of this process), and one of "another cluster": the child of
    # a live process that is not ours, as a raylet is the parent of its agents
    ours = subprocess.Popen(["bash", "-c", AGENT])
    other_raylet = subprocess.Popen(
        ["bash", "-c", f"({AGENT}) & echo $!; wait"], stdout=subprocess.PIPE, text=True
    )
    other = int(other_raylet.stdout.readline())
    try:
        deadline = time.time() + 10
        while time.time() < deadline and not {orphan, ours.pid, other} <= set(
            _pids_named("ray::DashboardAgent")
        ):
            time.sleep(0.05)
        assert _parent(other) == other_raylet.pid
        reaped = reap_orphaned_ray_agents()
        # another checkout's reaper may have been first: the orphan is gone all the same
        assert orphan in reaped or not _alive(orphan)
        assert ours.pid not in reaped and other not in reaped
        deadline = time.time() + 10
        while time.time() < deadline and _alive(orphan):
            time.sleep(0.05)
        assert not _alive(orphan)
        assert ours.poll() is None and _alive(other)  # live clusters' agents are untouched
    finally:
        for pid in (other, orphan):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for process in (ours, other_raylet):
            process.kill()
            process.wait()
