"""Ray agents left behind by a SIGKILLed local cluster are reaped by the next driver."""

from __future__ import annotations

import os
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


def test_orphaned_agents_are_reaped_and_others_left_alone():
    # an orphan (its parent shell exits at once, so it is re-parented to init) that ignores
    # SIGTERM, named as Ray names its dashboard agent; and a child of ours with the same name
    subprocess.run(
        ["bash", "-c", "(trap '' TERM; exec -a ray::DashboardAgent sleep 300) &"], check=True
    )
    ours = subprocess.Popen(["bash", "-c", "exec -a ray::DashboardAgent sleep 300"])
    deadline = time.time() + 10
    while time.time() < deadline and len(_pids_named("ray::DashboardAgent")) < 2:
        time.sleep(0.05)
    orphans = [p for p in _pids_named("ray::DashboardAgent") if p != ours.pid]
    assert orphans
    try:
        reaped = reap_orphaned_ray_agents()
        assert set(orphans) <= set(reaped) and ours.pid not in reaped
        deadline = time.time() + 10
        while time.time() < deadline and set(orphans) & set(_pids_named("ray::DashboardAgent")):
            time.sleep(0.05)
        assert not set(orphans) & set(_pids_named("ray::DashboardAgent"))
        assert ours.poll() is None  # a live cluster's agent (it has a parent) is untouched
    finally:
        ours.kill()
        ours.wait()
